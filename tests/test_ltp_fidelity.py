"""LTP against its reference: each difference is gone or a switchable, tested choice.

One test per item of the fidelity review: layer 0 never prunes, the regulariser's
scale and masks, the soft/hard optimiser settings, top-k rounding and the theta
floor, and a hard stage that cannot buy accuracy with FLOPs.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from tpjax.training import train
from tpjax.models import encoder
from tpjax.pruning import ltp
from tpjax.pruning import ltp_variant
from tpjax.pruning import topk


def _pruning(**fields):
  config = common.get_base_config().pruning
  config.update(dict(method="ltp", final_threshold=0.5, temperature=0.1,
                     score_norm="live"), **fields)
  return config


def _probs():
  """One example, 1 head, 4 real tokens + 1 pad; token 3 receives no attention."""
  rows = [[0.6, 0.2, 0.2, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0, 0.0], [0.4, 0.4, 0.2, 0.0, 0.0],
          [0.2, 0.4, 0.4, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]]
  return jnp.array([[rows]], jnp.float32), jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])


def _call(fn, index, probs, mask):
  protected = jnp.zeros(mask.shape, bool)
  return fn(index, encoder.attention_received(probs, mask), mask, None,
            jnp.sum(mask > 0, -1).astype(jnp.int32), protected)


# 1. Layer 0 ---------------------------------------------------------------------


def test_first_layer_never_prunes_and_its_threshold_gets_no_gradient():
  method = ltp.ThresholdMethod(_pruning(), num_layers=3, learned=True)
  params = {"delta": jnp.array([5.0, 0.0, 0.0])}  # would drop everything at layer 0
  assert float(method.thresholds(params)[0]) == 0.0
  probs, mask = _probs()
  keep, _, _ = _call(method.prune_fn(params, "hard"), 0, probs, mask)
  np.testing.assert_array_equal(keep, mask)
  soft_mask, _, aux = _call(method.prune_fn(params, "soft"), 0, probs, mask)
  np.testing.assert_array_equal(soft_mask, mask)
  assert aux is None  # not regularised either
  grad = jax.grad(lambda p: method.thresholds(p).sum())(params)
  assert float(grad["delta"][0]) == 0.0 and float(grad["delta"][1]) == 1.0
  # The old behaviour stays available as a named choice.
  free = ltp.ThresholdMethod(_pruning(first_layer_prunes=True), 3, learned=True)
  keep, _, _ = _call(free.prune_fn(params, "hard"), 0, probs, mask)
  assert keep.sum() < mask.sum()


# 2. Regulariser ------------------------------------------------------------------


def test_reference_regulariser_is_the_per_layer_mean_over_128_positions():
  masks = (None, jnp.array([[1.0, 0.5, 0.25, 0.0]]), jnp.array([[1.0, 0.0, 0.5, 0.5]]))
  attention_mask = jnp.array([[1, 1, 1, 0]])
  fixed = ltp.mask_regularizer(masks, attention_mask, "fixed", 128.0)
  np.testing.assert_allclose(fixed, [(1.75 + 1.5) / 128], rtol=1e-6)
  live = ltp.mask_regularizer(masks, attention_mask, "live")
  np.testing.assert_allclose(live, [(1.75 + 1.5) / 3], rtol=1e-6)


@pytest.mark.parametrize("variant,product", [("reference", False), ("tpjax", True)])
def test_regulariser_penalises_layer_masks_or_their_product(variant, product):
  method = ltp.ThresholdMethod(_pruning(variant=variant), num_layers=2, learned=True)
  probs, mask = _probs()
  previous = jnp.array([[1.0, 0.5, 1.0, 1.0, 0.0]])  # a token half pruned before
  new_mask, scale, aux = _call(method.prune_fn(method.init_params(None), "soft"), 1,
                               probs, previous)
  # By hand: attention each key receives from the query rows weighted by `previous`,
  # over the 3.5 live tokens; sigmoid((s - theta_1) / T) with theta_1 = 0.5 / 2 and
  # T = 0.1; [CLS] kept, the padding dropped.
  received = np.array([0.6 + 0.25 + 0.4 + 0.2, 0.2 + 0.15 + 0.4 + 0.4,
                       0.2 + 0.1 + 0.2 + 0.4, 0.0]) / 3.5
  layer_mask = np.append(1.0 / (1.0 + np.exp(-(received - 0.25) / 0.1)), 0.0)[None]
  layer_mask[0, 0] = 1.0
  np.testing.assert_allclose(aux, layer_mask * previous if product else layer_mask,
                             rtol=1e-6)
  if variant == "reference":  # output scaling, attention mask untouched
    np.testing.assert_allclose(scale, layer_mask, rtol=1e-6)
    np.testing.assert_array_equal(new_mask, previous)
  else:
    assert scale is None


# 3. Optimiser, rounding, floor ----------------------------------------------------


def _stage_config(variant):
  config = common.get_base_config()
  config.pruning.method = "ltp"
  config.pruning.variant = variant
  ltp_variant.complete(config)
  return config


def test_variants_fill_only_unset_choices():
  reference = _stage_config("reference")
  assert reference.pruning.soft_variant == "reference"
  assert reference.pruning.reg_norm == "fixed" and reference.pruning.reg_masks == "layer"
  assert reference.pruning.threshold_floor == 1e-5
  assert reference.pruning.topk_rounding == "round"
  for stage in ("soft", "hard"):
    settings = reference.stage_settings[stage]
    assert (settings.warmup_ratio, settings.weight_decay, settings.clip_mode) == (
        0.0, 0.0, "joint")
  assert reference.stage_settings.finetune.warmup_ratio is None  # config.train's
  tpjax = _stage_config("tpjax")
  assert tpjax.stage_settings.soft.clip_mode == "per_group"
  assert tpjax.pruning.soft_variant == "cumulative" and tpjax.pruning.reg_norm == "live"
  config = common.get_base_config()
  config.pruning.method = "ltp"
  config.pruning.variant = "reference"
  config.pruning.reg_norm = "live"  # an explicit choice wins over the variant
  ltp_variant.complete(config)
  assert config.pruning.reg_norm == "live" and config.pruning.reg_masks == "layer"
  config.pruning.variant = "paper"
  with pytest.raises(ValueError, match="variant"):
    ltp_variant.complete(config)


def _first_update(config, stage):
  settings = config.stage_settings[stage]
  tx = train.make_optimizer(settings, config.train, total_steps=100,
                            pruning_tx=optax.set_to_zero())
  params = {"model": {"w": jnp.zeros(2)}, "pruning": {"d": jnp.zeros(2)}}
  grads = {"model": {"w": jnp.array([3.0, 0.0])}, "pruning": {"d": jnp.array([0.0, 4.0])}}
  updates, state = tx.update(grads, tx.init(params), params)
  return updates["model"]["w"], optax.tree_utils.tree_get(state, "mu")["model"]["w"]


def test_reference_optimiser_clips_jointly_and_does_not_warm_up():
  update, mu = _first_update(_stage_config("reference"), "soft")
  np.testing.assert_allclose(mu, [0.1 * 3 / 5, 0.0], rtol=1e-5)  # one norm: 5
  assert float(jnp.abs(update).max()) > 0  # no warm-up: full learning rate at step 0
  update, mu = _first_update(_stage_config("tpjax"), "soft")
  np.testing.assert_allclose(mu, [0.1 * 1.0, 0.0], rtol=1e-5)  # own norm: 3
  assert float(jnp.abs(update).max()) == 0  # warm-up starts at learning rate 0


def test_topk_rounding():
  probs, mask = _probs()
  counts = {}
  for variant in ("reference", "tpjax"):
    config = _pruning(method="topk", keep_rate=0.625, topk_full_layers=1, variant=variant)
    method = topk.TopKMethod(config, num_layers=2)
    keep, _, _ = _call(method.prune_fn({}, "hard"), 1, probs, mask)
    counts[variant] = int(keep.sum())
  # 0.625 * 4 real tokens = 2.5: torch.round (half to even) keeps 2, ceil 3.
  assert counts == {"reference": 2, "tpjax": 3}


def test_threshold_floor_drops_unattended_tokens_in_reference_mode():
  probs, mask = _probs()
  params = {"delta": jnp.array([0.0, -1.0])}  # theta_1 < 0 would keep everything
  kept = {}
  for variant in ("reference", "tpjax"):
    method = ltp.ThresholdMethod(_pruning(variant=variant), 2, learned=True)
    keep, _, _ = _call(method.prune_fn(params, "hard"), 1, probs, mask)
    kept[variant] = np.asarray(keep)[0].tolist()
  assert kept["reference"] == [1, 1, 1, 0, 0]  # token 3 has score 0 < 1e-5
  assert kept["tpjax"] == [1, 1, 1, 1, 0]


# 4. The hard stage keeps the soft stage's FLOPs -------------------------------------


def test_flops_budget_and_selection():
  settings = ml_collections.ConfigDict({"flops_budget": "start"})
  assert train.flops_budget(settings, 0.54, 0.005) == pytest.approx(0.545)
  settings.flops_budget = "0.6"
  assert train.flops_budget(settings, 0.54, 0.005) == 0.6
  settings.flops_budget = ""
  assert train.flops_budget(settings, 0.54, 0.005) is None
  settings.flops_budget = "soft"
  with pytest.raises(ValueError, match="flops_budget"):
    train.flops_budget(settings, 0.54, 0.005)
  # (accuracy, relative FLOPs) at successive evaluations of a hard stage that drifts:
  history = [(0.880, 0.54), (0.893, 0.58), (0.885, 0.545), (0.899, 0.62)]
  best = max(history, key=lambda h: train.selection_score(*h, budget=0.545))
  assert best == (0.885, 0.545)
  # Nothing within budget: the fewest FLOPs wins.
  best = max(history[1:], key=lambda h: train.selection_score(*h, budget=0.5))
  assert best == (0.885, 0.545)


def test_a_stage_eval_cadence_is_checked():
  from tpjax.training import config_checks  # pylint: disable=import-outside-toplevel
  config = common.get_base_config()
  config.stages = ("finetune", "soft", "hard")
  config.pruning.method = "ltp"
  assert not config_checks.problems(config)
  config.stage_settings.hard.eval_every_steps = 50
  assert not config_checks.problems(config)
  for bad in (0, -5):
    config.stage_settings.hard.eval_every_steps = bad
    assert any("stage_settings.hard.eval_every_steps" in p
               for p in config_checks.problems(config))
