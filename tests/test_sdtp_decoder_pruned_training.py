"""The SDTP decoder's 'pruned' training recipe (tpjax/training/sdtp_decoder.py) on a
tiny decoder: the predictors trained through the model they prune.

Each test pins one property a plausible edit could break without another test noticing:
- the training masks are binary, keep exactly the inference kept counts and the
  always-kept tokens, and are cumulative (a token dropped at a stage stays dropped);
- the straight-through path: the LM and KD terms alone give every stage's predictor a
  gradient, and the backbone none;
- the KD term is KL(unpruned || pruned): zero when nothing is pruned, positive and
  equal to that KL (not the reverse one) otherwise;
- a few steps on a fixed batch lower the loss, a non-finite loss stops training, and
  the whole command writes the recipe beside the predictors;
- bad config values are refused with one sentence.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import smollm_sdtp
from tests import helpers
from tpjax.models import decoder
from tpjax.pruning import sdtp_decoder
from tpjax.training import config_checks
from tpjax.training import sdtp_decoder as train_lib

TINY = helpers.tiny_decoder_config()
WINDOW = 40
# Always kept: the first 2 and the last ceil(0.2 * 40) = 8 tokens; stages keep 28, 18.
SCHEDULE = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.45), keep_first=2,
                                 keep_last=0.2, step=4)
NOTHING_PRUNED = sdtp_decoder.Schedule(layers=(2, 4), keep=(1.0, 1.0), keep_first=2,
                                       keep_last=0.2, step=4)
WINDOWS = np.random.RandomState(0).randint(3, 96, (6, WINDOW)).astype(np.int32)
SPAN = (32, 39)  # predictions made at positions 32..38, all always kept


def _config(**train):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.saliency = ml_collections.ConfigDict(
      {"norm": "seq_max", "target_last": 0.2, "max_windows": 6})
  config.train = ml_collections.ConfigDict({
      "recipe": "pruned", "steps": 4, "batch_size": 2, "learning_rate": 1e-2,
      "mse_weight": 1.0, "rank_weight": 1.0, "lm_weight": 1.0, "kd_weight": 1.0,
      "gumbel_tau": 1.0, "remat": False, "holdout_windows": 2, "progress_bar": False,
      **train})
  return config


@pytest.fixture(scope="module")
def tiny():
  model = decoder.DecoderModel(TINY)
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  hiddens, targets, _ = train_lib.compute_targets(model, params, WINDOWS, SCHEDULE,
                                                  _config())
  predictors = sdtp_decoder.init_predictors(TINY, SCHEDULE, jax.random.PRNGKey(1))
  return params, predictors, hiddens, targets


@jax.jit
def _gumbel_masks(params, predictors, ids, rng):
  n = jnp.full((ids.shape[0],), ids.shape[1], jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  mask_fn = sdtp_decoder.predictor_mask_fn(SCHEDULE, predictors, n, rng)
  _, masks, _ = sdtp_decoder.masked_prefill(TINY, params, ids, positions,
                                            jnp.ones(ids.shape, bool), SCHEDULE, mask_fn)
  return masks


def test_tail_span_is_the_always_kept_target_region():
  assert train_lib.tail_span(WINDOW, SCHEDULE, 0.2) == SPAN


def test_training_masks_are_cumulative_binary_and_keep_the_schedules_counts(tiny):
  """Over many Gumbel draws: forward values are exactly 0 or 1; each stage keeps
  exactly kept_count tokens (28 and 18 of 40), the always-kept ones among them; no
  token dropped at stage 0 is back at stage 1; and the draws differ (noise is used)."""
  params, predictors, _, _ = tiny
  always = train_lib.always_mask(WINDOW, SCHEDULE)
  seen = set()
  for seed in range(8):
    masks = np.asarray(_gumbel_masks(params, predictors, jnp.asarray(WINDOWS),
                                     jax.random.PRNGKey(seed)))
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert masks.sum(-1).tolist() == [[28] * 6, [18] * 6]
    assert np.all(masks[:, :, always] == 1.0)
    assert not np.any((masks[1] == 1.0) & (masks[0] == 0.0)), "a dropped token came back"
    seen.add(masks.tobytes())
  assert len(seen) == 8


def test_straight_through_gradient_reaches_every_predictor_and_not_the_backbone(tiny):
  """With the saliency terms off, only the masks connect the predictors to the loss:
  every stage's parameters must get a gradient through the straight-through path
  (a mask that stops it, e.g. the hard sample alone, gives none). The backbone is
  frozen inside the loss: its gradient is exactly zero, and a step leaves it as is."""
  params, predictors, _, targets = tiny
  config = _config(mse_weight=0.0, rank_weight=0.0)
  ids, t = jnp.asarray(WINDOWS[:2]), jnp.asarray(targets[:, :2])
  teacher = train_lib.teacher_tail(TINY, params, ids, SPAN)
  loss = lambda p, mp: train_lib.pruned_loss(p, mp, ids, teacher, t, jax.random.PRNGKey(3),
                                             SCHEDULE, SPAN, config, TINY)[0]
  g_pred, g_model = jax.jit(jax.grad(loss, argnums=(0, 1)))(predictors, params)
  for stage, g in enumerate(g_pred):
    norm = float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(g)))
    assert norm > 1e-6, f"stage {stage}'s predictor gets no gradient"
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g_model))


def test_kd_is_the_forward_kl_zero_without_pruning(tiny):
  """KD = KL(unpruned || pruned) over the tail predictions: recomputed here from the
  two models' logits (the pruned one under the inference decision), it matches, and
  differs from the reverse KL; with keep ratios of 1 nothing is pruned and it is 0.
  The final norm's scale is raised so the predictions are sharp (near-uniform ones
  make the two directions agree to second order)."""
  params, predictors, _, targets = tiny
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: 30 * p if "['model']['norm']" in jax.tree_util.keystr(path) else p,
      params)
  config = _config()
  ids, t = jnp.asarray(WINDOWS[:2]), jnp.asarray(targets[:, :2])
  teacher = train_lib.teacher_tail(TINY, params, ids, SPAN)
  loss = jax.jit(lambda schedule, rng: train_lib.pruned_loss(
      predictors, params, ids, teacher, t, rng, schedule, SPAN, config, TINY)[1],
                 static_argnums=0)
  parts = loss(SCHEDULE, None)
  model = decoder.DecoderModel(TINY)
  full = jax.nn.log_softmax(model.apply({"params": params}, ids)[:, 32:39], -1)
  n = jnp.full((2,), WINDOW, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(WINDOW), ids.shape)
  hidden, _, _ = jax.jit(lambda: sdtp_decoder.masked_prefill(
      TINY, params, ids, positions, jnp.ones(ids.shape, bool), SCHEDULE,
      sdtp_decoder.predictor_mask_fn(SCHEDULE, predictors, n)))()
  pruned = jax.nn.log_softmax(model.apply({"params": params}, hidden[:, 32:39],
                                          method=model.head), -1)
  forward = np.mean(np.sum(np.exp(full) * (full - pruned), -1))
  reverse = np.mean(np.sum(np.exp(pruned) * (pruned - full), -1))
  assert float(parts["kd"]) > 1e-4
  np.testing.assert_allclose(float(parts["kd"]), forward, rtol=1e-4)
  # The reverse KL lies 10x the tolerance away, so the check above tells them apart.
  assert abs(forward - reverse) > 1e-3 * forward, (forward, reverse)
  none = loss(NOTHING_PRUNED, jax.random.PRNGKey(0))
  assert float(none["kd"]) < 1e-6
  assert np.asarray(none["kept"]).tolist() == [1.0, 1.0]


def test_steps_on_a_fixed_batch_lower_the_loss(tiny):
  """Pure steps on one fixed batch with fixed noise: every loss finite, the last one
  below the first; the backbone passed in is not modified."""
  params, predictors, _, targets = tiny
  config = _config(learning_rate=3e-2)
  tx = optax.adam(config.train.learning_rate)
  step = train_lib.pruned_step(tx, SCHEDULE, SPAN, config, TINY)
  before = jax.tree.map(np.array, params)
  teacher = train_lib.teacher_tail(TINY, params, jnp.asarray(WINDOWS[:2]), SPAN)
  p, opt = predictors, tx.init(predictors)
  losses = []
  for _ in range(12):
    p, opt, loss, _ = step(p, opt, params, jnp.asarray(WINDOWS[:2]), teacher,
                           jnp.asarray(targets[:, :2]), jax.random.PRNGKey(5))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))


def test_train_pruned_logs_held_out_metrics_at_the_inference_counts(tiny):
  params, _, hiddens, targets = tiny
  score_params, log = train_lib.train_pruned(params, WINDOWS, targets, hiddens, SCHEDULE,
                                             _config(), TINY)
  assert len(score_params) == 2
  for when in ("before", "after"):
    assert set(log[when]) == {"loss", "lm", "kd", "mse", "rank", "kept",
                              "topk_agreement"}
    np.testing.assert_allclose(log[when]["kept"], [28 / 40, 18 / 40])
  assert [c["step"] for c in log["curve"]] == [1]
  assert all(np.isfinite(v) for v in log["curve"][0].values())


def test_a_non_finite_loss_stops_training():
  def step(p, o, pick, i):
    return p, o, jnp.float32(np.nan if i == 2 else 1.0), {}
  config = _config()
  with pytest.raises(train_lib.NonFiniteLoss, match="step 3: the loss is nan"):
    train_lib.fit({"w": jnp.zeros(1)}, optax.adam(1e-3), step, 4, config,
                  lambda p: {}, "pruned")


def test_a_step_out_of_memory_says_what_to_lower():
  def step(p, o, pick, i):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes.")
  with pytest.raises(train_lib.StepOutOfMemory,
                     match="step 1 with config.train.batch_size=2: RESOURCE_EXHAUSTED.*"
                           "lower config.train.batch_size .and raise config.train.accumulate"):
    train_lib.fit({"w": jnp.zeros(1)}, optax.adam(1e-3), step, 4, _config(),
                  lambda p: {}, "pruned")


def test_config_checks_refuse_bad_values():
  config = smollm_sdtp.get_config()
  assert train_lib.config_problems(config) == []
  config.train.recipe = "pruned"
  assert train_lib.config_problems(config) == []
  config.train.recipe = "gumbel"
  config.train.gumbel_tau = 0.0
  config.train.kd_weight = -1.0
  config.saliency.target = "gradient"
  config.train.accumulate = 0
  with pytest.raises(config_checks.ConfigError) as err:
    train_lib.check_config(config)
  message = str(err.value)
  assert "config.train.recipe='gumbel' is not allowed (teacher_forcing or pruned)" in message
  assert "config.train.gumbel_tau=0.0 is not allowed" in message
  assert "config.train.kd_weight=-1.0 is not allowed" in message
  assert "config.saliency.target='gradient' is not allowed (hidden or mask)" in message
  assert "config.train.accumulate=0 is not allowed" in message
  config = smollm_sdtp.get_config()
  config.train.recipe = "pruned"
  config.train.lm_weight = config.train.kd_weight = 0.0
  with pytest.raises(config_checks.ConfigError, match="needs kd_weight > 0"):
    train_lib.check_config(config)


def test_main_writes_the_recipe_beside_the_predictors(tiny, tmp_path, monkeypatch):
  """The command on the tiny decoder with the 'pruned' recipe: predictors.msgpack and
  sdtp.json (recipe, held-out log) in the workdir, loadable for inference."""
  params, _, _, _ = tiny

  class Tokenizer:
    def encode(self, text):
      return [3 + (ord(c) % 90) for c in text]

  article = lambda i: train_lib.squad_docs.Article(f"a{i}", ("xyz" * 30 + str(i),), ())
  monkeypatch.setattr(train_lib.pretrained, "load_pretrained",
                      lambda name: (decoder.DecoderModel(TINY), params, Tokenizer()))
  monkeypatch.setattr(train_lib.squad_docs, "load_articles",
                      lambda path: [article(i) for i in range(8)])
  config = smollm_sdtp.get_config()
  config.schedule.update({"start": 2, "every": 2, "ratio": 0.7, "keep_first": 2,
                          "keep_last": 0.2, "step": 4})
  config.saliency.update({"window": WINDOW, "windows_per_article": 2, "max_windows": 6,
                          "target_last": 0.2})
  config.train.update({"recipe": "pruned", "steps": 2, "batch_size": 2,
                       "holdout_windows": 2, "remat": True, "progress_bar": False})
  monkeypatch.setattr(train_lib, "_CONFIG", type("Flag", (), {"value": config})())
  monkeypatch.setattr(train_lib, "_WORKDIR", type("Flag", (), {"value": str(tmp_path)})())
  train_lib.main([])
  with open(os.path.join(tmp_path, "sdtp.json")) as f:
    meta = json.load(f)
  assert meta["recipe"] == "pruned" and meta["config"]["train"]["recipe"] == "pruned"
  assert meta["windows"] == 6 and "kd" in meta["log"]["after"]
  loaded, schedule, _ = sdtp_decoder.load_predictors(str(tmp_path), TINY)
  assert schedule.layers == (2, 4) and len(loaded) == 2
