"""Pruning transforms on hand-made arrays."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tpjax.models import config as config_lib
from tpjax.models.encoder import attention_received as received
from tpjax.pruning import flops
from tpjax.pruning import ltp
from tpjax.pruning import scores
from tpjax.pruning import topk


def _probs():
  """One example, 2 heads, 3 real tokens + 1 pad; rows sum to 1 over real keys."""
  h0 = [[0.5, 0.3, 0.2, 0.0], [0.1, 0.8, 0.1, 0.0], [0.2, 0.2, 0.6, 0.0],
        [0.25, 0.25, 0.5, 0.0]]  # the pad row must not count
  h1 = [[1.0, 0.0, 0.0, 0.0], [0.4, 0.4, 0.2, 0.0], [0.0, 0.5, 0.5, 0.0],
        [0.3, 0.3, 0.4, 0.0]]
  return jnp.array([[h0, h1]], jnp.float32), jnp.array([[1.0, 1.0, 1.0, 0.0]])


def test_importance_counts_live_rows_only():
  probs, mask = _probs()
  # column sums over live rows: head0 (0.8, 1.3, 0.9), head1 (1.4, 0.9, 0.7)
  fixed = scores.importance(probs, mask, "fixed", 10.0)
  np.testing.assert_allclose(fixed[0], [2.2 / 20, 2.2 / 20, 1.6 / 20, 0.0], atol=1e-6)
  live = scores.importance(probs, mask, "live")
  np.testing.assert_allclose(live[0], [2.2 / 6, 2.2 / 6, 1.6 / 6, 0.0], atol=1e-6)
  # a pruned (dead) query row stops counting, and its column is scored 0
  pruned = scores.importance(probs, jnp.array([[1.0, 1.0, 0.0, 0.0]]), "fixed", 10.0)
  np.testing.assert_allclose(pruned[0], [(0.6 + 1.4) / 20, (1.1 + 0.4) / 20, 0, 0],
                             atol=1e-6)


def test_importance_does_not_depend_on_padding():
  probs, mask = _probs()
  wider = jnp.pad(probs, ((0, 0), (0, 0), (0, 4), (0, 4)))
  wider_mask = jnp.pad(mask, ((0, 0), (0, 4)))
  for norm in scores.SCORE_NORMS:
    np.testing.assert_allclose(scores.importance(wider, wider_mask, norm)[:, :4],
                               scores.importance(probs, mask, norm), atol=1e-7)
  with pytest.raises(ValueError, match="score norm"):
    scores.importance(probs, mask, "padded")


def test_threshold_schedule_is_linear_from_zero():
  np.testing.assert_allclose(ltp.threshold_schedule(0.012, 6),
                             [0, 0.002, 0.004, 0.006, 0.008, 0.010], atol=1e-7)


def test_soft_and_hard_masks_protect_cls_and_drop_padding():
  score = jnp.array([[0.0, 0.02, 0.01, 0.005, 0.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
  soft = ltp.soft_mask(score, 0.01, 1e-3)
  np.testing.assert_allclose(soft[0, 2], 0.5)
  np.testing.assert_allclose(soft[0, 1], 1 / (1 + np.exp(-10)), rtol=1e-6)
  keep = ltp.hard_keep(score, 0.01, mask)
  np.testing.assert_array_equal(keep, [[1, 1, 1, 0, 0]])  # [CLS] kept despite score 0


def test_hard_keep_is_cumulative():
  previous = jnp.array([[1.0, 0.0, 1.0, 1.0]])  # token 1 pruned earlier
  score = jnp.array([[0.5, 0.9, 0.9, 0.0]])
  np.testing.assert_array_equal(ltp.hard_keep(score, 0.1, previous), [[1, 0, 1, 0]])


def test_regularizer_is_mean_over_real_tokens_summed_over_layers():
  attention_mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  masks = (jnp.array([[1.0, 0.5, 0.9, 0.9], [1.0, 0.0, 0.0, 1.0]]),
           jnp.array([[1.0, 0.0, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]]))
  reg = ltp.mask_regularizer(masks, attention_mask)
  np.testing.assert_allclose(reg, [0.75 + 0.5, 0.5 + 0.5], atol=1e-6)


def _ltp(variant="reference", learned=True):
  """An LTP method whose soft variant and regularised masks follow `variant`."""
  cfg = ml_collections.ConfigDict(dict(
      final_threshold=0.5, temperature=0.1, reg_lambda=0.1, soft_variant=variant,
      variant="reference" if variant == "reference" else "tpjax",
      score_norm="live", score_norm_constant=128.0))
  return ltp.ThresholdMethod(cfg, num_layers=2, learned=learned)


def test_ltp_stage_hooks():
  method = _ltp()
  params = method.init_params(None)
  assert method.prune_fn(params, "finetune") is None
  probs, mask = _probs()
  lengths, r = jnp.array([3]), received(probs, mask)
  new_mask, scale, aux = method.prune_fn(params, "soft")(1, r, mask, None, lengths, None)
  np.testing.assert_array_equal(new_mask, mask)  # reference: mask unchanged
  assert scale is aux and float(scale[0, 0]) == 1.0 and float(scale[0, 3]) == 0.0
  keep, scale, _ = method.prune_fn(params, "hard")(1, r, mask, None, lengths, None)
  assert scale is None
  # live scores 0.367, 0.367, 0.267 against theta_1 = 0.25: all real tokens stay
  np.testing.assert_array_equal(keep, [[1, 1, 1, 0]])
  params = {"delta": jnp.array([0.0, 0.05])}  # theta_1 = 0.3 drops token 2
  keep, _, _ = method.prune_fn(params, "hard")(1, r, mask, None, lengths, None)
  np.testing.assert_array_equal(keep, [[1, 1, 0, 0]])


def test_cumulative_variant_multiplies_masks():
  method = _ltp("cumulative")
  probs, _ = _probs()
  mask = jnp.array([[1.0, 0.5, 1.0, 0.0]])
  new_mask, scale, _ = method.prune_fn(method.init_params(None), "soft")(
      1, received(probs, mask), mask, None, jnp.array([3]), None)
  assert scale is None
  assert float(new_mask[0, 1]) <= 0.5 and float(new_mask[0, 0]) == 1.0
  assert float(new_mask[0, 3]) == 0.0


def test_manual_thresholds_have_no_parameters():
  method = _ltp(learned=False)
  assert method.init_params(None) == {} and method.name == "threshold"
  np.testing.assert_allclose(method.thresholds({}), [0.0, 0.25])


def test_topk_schedule():
  np.testing.assert_allclose(topk.keep_rates(6, 0.4), [1, 1, 1, 0.8, 0.6, 0.4])
  np.testing.assert_allclose(topk.keep_rates(6, 0.5, full_layers=1),
                             [1, 0.9, 0.8, 0.7, 0.6, 0.5])
  rates12 = topk.keep_rates(12, 0.0)
  assert rates12[:3] == [1.0] * 3 and rates12[-1] == 0.01  # floor


def test_top_k_keep_ranks_live_tokens_and_keeps_cls():
  score = jnp.array([[0.0, 0.3, 0.1, 0.2, 0.9], [0.0, 0.1, 0.5, 0.4, 0.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0, 1.0]])
  keep = topk.top_k_keep(score, mask, jnp.array([3, 2]))
  np.testing.assert_array_equal(keep, [[1, 1, 0, 1, 0], [1, 0, 0, 1, 0]])


def test_layer_macs_and_relative_flops():
  cfg = config_lib.EncoderConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                                 num_attention_heads=2)
  assert flops.layer_macs(3, 2, 4, 8) == 2 * 4 * 9 + 4 * 16 * 3 + 2 * 4 * 8 * 2
  lengths = np.array([4, 2])
  assert flops.summarize(lengths, np.array([[4, 4], [2, 2]]), cfg)["relative_flops"] == 1.0
  kept = np.array([[2, 1], [2, 2]])
  pruned = (flops.layer_macs(4, 2, 4, 8) + flops.layer_macs(2, 1, 4, 8)
            + 2 * flops.layer_macs(2, 2, 4, 8))
  full = 2 * flops.layer_macs(4, 4, 4, 8) + 2 * flops.layer_macs(2, 2, 4, 8)
  result = flops.summarize(lengths, kept, cfg, "sst2")
  assert result["relative_flops"] == pytest.approx(pruned / full)
  assert result["relative_flops_padded64"] == pytest.approx(
      pruned / (4 * flops.layer_macs(64, 64, 4, 8)))
  np.testing.assert_allclose(result["tokens_kept_per_layer"], [2 / 3, 1.5 / 3], atol=1e-4)
