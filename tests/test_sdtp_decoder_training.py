"""The SDTP decoder's module training (tpjax/training/sdtp_decoder.py) on tiny inputs.

Each test pins one part of the recipe that a plausible edit could break without any
other test noticing (issue 25, items 2, 3 and 6):
- the saliency target T counts only predictions made inside the always-kept tail, so a
  prunable token's saliency is its influence on other tokens (none when tokens do not
  interact);
- 'seq_max' divides by the maximum over prunable tokens only, always-kept tokens get 0;
- T is the (positive) next-token loss of that tail;
- the predictor losses are minimised with the right sign: held-out top-k agreement with
  the targets rises far above chance.
"""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests import helpers
from tpjax.models import decoder
from tpjax.pruning import sdtp
from tpjax.pruning import sdtp_decoder
from tpjax.training import sdtp_decoder as train_lib

TINY = helpers.tiny_decoder_config()
WINDOW = 40
# Always kept: the first 2 and the last ceil(0.2 * 40) = 8 tokens.
SCHEDULE = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.45), keep_first=2,
                                 keep_last=0.2, step=4)
WINDOWS = np.random.RandomState(0).randint(3, 96, (2, WINDOW)).astype(np.int32)


def _config(norm="seq_max", target_last=0.2):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.saliency = ml_collections.ConfigDict({"norm": norm, "target_last": target_last})
  return config


@pytest.fixture(scope="module")
def tiny():
  model = decoder.DecoderModel(TINY)
  return model, decoder.init_params(model, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def raw_targets(tiny):
  model, params = tiny
  return train_lib.compute_targets(model, params, WINDOWS, SCHEDULE, _config("raw"))


def test_target_weights_stay_inside_the_always_kept_tail():
  weights = sdtp_decoder.target_weights(WINDOW, SCHEDULE, 0.2)
  # Predictions made at positions 32..38 (39 has no next token in the window).
  assert np.flatnonzero(weights).tolist() == list(range(32, 39))
  with pytest.raises(ValueError, match="reaches prunable tokens"):
    sdtp_decoder.target_weights(WINDOW, SCHEDULE, 0.25)
  with pytest.raises(ValueError, match="at least 2"):
    sdtp_decoder.target_weights(WINDOW, SCHEDULE, 0.01)


def test_prunable_saliency_is_influence_on_other_tokens(tiny, raw_targets):
  """With attention switched off (o_proj = 0) tokens do not interact, so no prunable
  token can influence a prediction made at another position: every prunable target
  must be exactly 0. A target region that reaches prunable tokens (e.g. the last 25%
  of the window) gives them their own prediction's gradient instead."""
  model, params = tiny
  prunable = ~train_lib.always_mask(WINDOW, SCHEDULE)
  _, targets, _ = raw_targets
  assert np.all(np.abs(targets[:, :, prunable]).max(-1) > 1e-7)  # they do interact
  isolated = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if "o_proj" in jax.tree_util.keystr(path) else p,
      params)
  _, alone, _ = train_lib.compute_targets(model, isolated, WINDOWS, SCHEDULE,
                                          _config("raw"))
  assert np.abs(alone[:, :, prunable]).max() == 0.0


def test_seq_max_normalises_over_prunable_tokens_only(tiny, raw_targets):
  model, params = tiny
  _, raw, _ = raw_targets
  _, norm, _ = train_lib.compute_targets(model, params, WINDOWS, SCHEDULE, _config())
  prunable = ~train_lib.always_mask(WINDOW, SCHEDULE)
  assert np.all(norm[:, :, ~prunable] == 0.0)
  np.testing.assert_allclose(norm[:, :, prunable].max(-1), 1.0, rtol=1e-6)
  top = np.abs(raw[:, :, prunable]).max(-1, keepdims=True)
  np.testing.assert_allclose(norm[:, :, prunable], np.abs(raw[:, :, prunable]) / top,
                             rtol=1e-4, atol=1e-7)
  # The always-kept tokens carry the largest saliency (the tail's own predictions),
  # so a maximum over all tokens would squash every prunable target.
  weights = jnp.asarray(sdtp_decoder.target_weights(WINDOW, SCHEDULE, 0.2))[None]
  for w, ids in enumerate(WINDOWS):
    target_fn = sdtp_decoder.probe_target_fn(TINY, params, jnp.asarray(ids[None]),
                                             SCHEDULE.layers, weights)
    everywhere, _ = sdtp.saliency_targets(
        target_fn, [(1, WINDOW, TINY.hidden_size)] * 2, "abs")
    for stage in range(2):
      assert float(everywhere[stage].max()) > 2 * top[stage, w, 0]


def test_target_is_the_positive_tail_loss(tiny, raw_targets):
  """T = mean next-token loss of the predictions made at positions 32..38, per window,
  from the plain forward; and the raw saliency is d T / d x (not d(-T)/dx): a
  finite-difference step on one prunable token's hidden state moves T by it."""
  model, params = tiny
  hiddens, raw, values = raw_targets
  logits = model.apply({"params": params}, jnp.asarray(WINDOWS))
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), WINDOWS[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(values, nll[:, 32:39].mean(1), rtol=1e-4)
  assert np.all(values > 0)
  weights = jnp.asarray(sdtp_decoder.target_weights(WINDOW, SCHEDULE, 0.2))[None]
  ids = jnp.asarray(WINDOWS[:1])
  target_fn = sdtp_decoder.probe_target_fn(TINY, params, ids, SCHEDULE.layers, weights)
  zeros = tuple(jnp.zeros((1, WINDOW, TINY.hidden_size)) for _ in SCHEDULE.layers)
  _, h = target_fn(zeros)
  prunable = np.flatnonzero(~train_lib.always_mask(WINDOW, SCHEDULE))
  token = prunable[np.argmax(np.abs(raw[0, 0, prunable]))]
  eps = 5e-2
  def t_at(scale):
    probes = list(zeros)
    probes[0] = probes[0].at[0, token].set(scale * h[0][0, token])
    return float(target_fn(tuple(probes))[0])
  fd = (t_at(eps) - t_at(-eps)) / (2 * eps)
  assert abs(raw[0, 0, token]) > 1e-4
  np.testing.assert_allclose(raw[0, 0, token], fd, rtol=5e-2)


def test_training_learns_the_targets_ranking():
  """On synthetic hidden states whose targets are a monotone function of a direction,
  the trained modules' held-out top-k agrees with the targets' top-k far above chance
  (0.5 and 0.25); a sign error in a loss or in the update sends it to chance or below."""
  stages, windows, seq, d = 2, 32, 32, 32
  rng = np.random.RandomState(0)
  hiddens = rng.randn(stages, windows, seq, d).astype(np.float32)
  direction = rng.randn(stages, d).astype(np.float32)
  schedule = sdtp_decoder.Schedule(layers=(1, 2), keep=(0.5, 0.25), keep_first=2,
                                   keep_last=0.1, step=4)
  prunable = ~train_lib.always_mask(seq, schedule)
  raw = np.log1p(np.exp(np.einsum("swld,sd->swl", hiddens, direction)))
  targets = np.asarray(sdtp.normalize_saliency(
      jnp.asarray(raw), jnp.broadcast_to(jnp.asarray(prunable), raw.shape), "seq_max"))
  config = _config()
  config.train = ml_collections.ConfigDict({
      "steps": 150, "batch_size": 8, "learning_rate": 3e-3, "mse_weight": 1.0,
      "rank_weight": 1.0, "holdout_windows": 8})
  cfg = types.SimpleNamespace(hidden_size=d)
  trained, log = train_lib.train_predictors(hiddens, targets, prunable, schedule, config,
                                            cfg)
  before, after = log["before"], log["after"]
  assert min(after["topk_agreement"]) > 0.7, after["topk_agreement"]
  assert all(a > b + 0.2 for a, b in zip(after["topk_agreement"], before["topk_agreement"],
                                          strict=True))
  assert all(a < b for a, b in zip(after["mse"], before["mse"], strict=True))
  assert all(a < b for a, b in zip(after["rank"], before["rank"], strict=True))
  # A warm start (config.train.init_from) starts where these modules ended.
  config.train.steps = 1
  _, warm = train_lib.train_predictors(hiddens, targets, prunable, schedule, config, cfg,
                                       init=trained)
  assert warm["before"]["topk_agreement"] == after["topk_agreement"]


def test_accumulated_micro_batches_update_as_one_batch():
  """batch_size 2 x accumulate 2 trains exactly as batch_size 4: the same windows per
  update (one draw, split), the mean gradient, one Adam update; updating after every
  micro-batch, or summing instead of averaging, gives other parameters."""
  stages, seq, d = 2, 16, 8
  rng = np.random.RandomState(1)
  hiddens = rng.randn(stages, 4 + 2, seq, d).astype(np.float32)
  targets = rng.rand(stages, 4 + 2, seq).astype(np.float32)
  schedule = sdtp_decoder.Schedule(layers=(1, 2), keep=(0.5, 0.25), keep_first=2,
                                   keep_last=0.1, step=4)
  prunable = ~train_lib.always_mask(seq, schedule)
  cfg = types.SimpleNamespace(hidden_size=d)

  def train(batch_size, accumulate):
    config = _config()
    config.train = ml_collections.ConfigDict({
        "steps": 3, "batch_size": batch_size, "accumulate": accumulate,
        "learning_rate": 1e-2, "mse_weight": 1.0, "rank_weight": 1.0,
        "holdout_windows": 2})
    return train_lib.train_predictors(hiddens, targets, prunable, schedule, config, cfg)[0]

  whole, split, one = train(4, 1), train(2, 2), train(2, 1)
  close = lambda a, b: jax.tree.all(jax.tree.map(
      lambda x, y: np.allclose(x, y, rtol=1e-4, atol=1e-6), a, b))
  assert close(whole, split)
  assert not close(whole, one)


def test_a_warm_start_from_other_layers_is_refused(tmp_path):
  trained = sdtp_decoder.init_predictors(TINY, SCHEDULE, jax.random.PRNGKey(0))
  sdtp_decoder.save_predictors(str(tmp_path), trained, SCHEDULE)
  same = train_lib.initial_predictors(str(tmp_path), TINY, SCHEDULE)
  assert jax.tree.all(jax.tree.map(np.array_equal, same, trained))
  other = sdtp_decoder.Schedule(layers=(1, 3), keep=(0.7, 0.45), keep_first=2,
                                keep_last=0.2, step=4)
  with pytest.raises(train_lib.config_checks.ConfigError, match="layers"):
    train_lib.initial_predictors(str(tmp_path), TINY, other)
