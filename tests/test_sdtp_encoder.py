"""SDTP on the encoder: saliency of the real model, frozen backbone, policy attention,
a tiny run, and compacted inference equal to masked evaluation."""

import fractions
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from tests import helpers
from tpjax.training import train
from tpjax.inference import engine as engine_lib
from tpjax.models import classifier
from tpjax.models import encoder as encoder_lib
from tpjax.pruning import registry
from tpjax.pruning import sdtp
from tpjax.pruning import sdtp_encoder

PAIRS = [("the film was good", "a fine story"), ("awful", "the plot is very dull indeed")]
# Keep ratios of the original length at layers 1..3, near the shared LTP case's.
RATIOS = (0.8, 0.6, 0.45)
EXACT_ATOL = 1e-6  # as tests/test_engine.py for LTP


def _config(**fields):
  config = tiny.get_config()
  with config.unlocked():
    config.model.overrides.initializer_range = 0.2
  config.pruning.method = "sdtp"
  config.pruning.sdtp_keep_ratios = RATIOS
  config.pruning.update(fields)
  return config


@pytest.fixture(scope="module")
def tiny_sdtp():
  config = _config()
  model, model_params, tokenizer = classifier.build(config, 2, jax.random.PRNGKey(7))
  method = registry.get_method(config.pruning, model.config)
  return model, model_params, tokenizer, method


def _batch(tokenizer, n=4):
  return dict(tokenizer(helpers.PRUNING_TEXTS[:n], length=32),
              labels=np.array([1, 0, 0, 1][:n]), weights=np.ones(n, np.float32))


def test_config_checks(tiny_sdtp):
  model = tiny_sdtp[0]
  assert tiny_sdtp[3].layers == (1, 2, 3) and tiny_sdtp[3].ratios == RATIOS
  with pytest.raises(ValueError, match="3 locations"):
    registry.get_method(_config(sdtp_keep_ratios=(0.5, 0.4)).pruning, model.config)
  with pytest.raises(ValueError, match="ascending"):
    registry.get_method(_config(sdtp_layers=(2, 1), sdtp_keep_ratios=()).pruning,
                        model.config)
  geometric = registry.get_method(_config(sdtp_keep_ratios=(), sdtp_keep_ratio=0.5).pruning,
                                  model.config)
  assert geometric.ratios == (0.5, 0.25, 0.125)


@pytest.mark.parametrize("target", ["logit", "loss"])
def test_encoder_saliency_equals_finite_difference(tiny_sdtp, target):
  model, model_params, tokenizer, _ = tiny_sdtp
  batch = _batch(tokenizer, 2)
  layers = (1, 3)
  got = sdtp_encoder.encoder_saliency(model, model_params, batch, layers, target, "raw")
  ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
  plain = model.apply({"params": model_params}, ids, mask, types).logits
  zeros = {l: jnp.zeros(ids.shape + (model.config.hidden_size,)) for l in layers}
  probed, _ = model.apply({"params": model_params}, ids, mask, types, zeros,
                          method=sdtp_encoder.probed_forward)
  np.testing.assert_allclose(probed, plain, atol=1e-6)  # zero probes: the plain model

  def value(layer, b, t, e):
    """The target with token t's post-attention state at `layer` scaled by 1 + e."""
    def forward(module):
      hidden = module.embed(ids, mask, types)
      for index, block in enumerate(module.layers):
        hidden, _ = block.attend(hidden, mask.astype(jnp.float32), True)
        if index == layer:
          hidden = hidden.at[b, t].multiply(1.0 + e)
        hidden = block.feed_forward(hidden, True)
      return module.head(hidden)
    logits = model.apply({"params": model_params}, method=forward)
    if target == "loss":
      return float(jnp.sum(optax_ce(logits, batch["labels"])))
    return float(jnp.sum(logits[np.arange(2), batch["labels"][:2]]))

  # d/de T(x_t * (1 + e)) at e = 0 is sum_d dT/dx_t * x_t.
  eps = 1e-2
  for s, layer in enumerate(layers):
    for b, t in [(0, 1), (1, 3), (1, 7)]:  # real, prunable tokens
      estimate = (value(layer, b, t, eps) - value(layer, b, t, -eps)) / (2 * eps)
      np.testing.assert_allclose(float(got[s][b, t]), estimate, rtol=2e-2, atol=1e-4)
  # [CLS], [SEP] and padding get no target
  special = ~np.asarray(sdtp.prunable(mask > 0, encoder_lib.protected_tokens(mask, types)))
  assert (np.asarray(got[0])[special] == 0).all()


def optax_ce(logits, labels):
  return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, jnp.asarray(labels)[:, None], 1)[:, 0]


def test_policy_attention_equals_masked_attention_for_kept_tokens(tiny_sdtp):
  model, model_params, tokenizer, _ = tiny_sdtp
  batch = tokenizer(helpers.PRUNING_TEXTS[:4], length=32)
  dropped = np.array(batch["attention_mask"], np.float32)
  dropped[:, 2] = 0.0  # a hard-dropped token at every layer's keys

  def prune(index, received, token_mask, hidden, lengths, protected):
    return token_mask * jnp.asarray(dropped), None, None

  run = lambda softmax: model.apply({"params": model_params}, **batch, prune_fn=prune,
                                    attention_softmax=softmax)
  np.testing.assert_allclose(run(sdtp.policy_softmax).logits, run(None).logits, atol=1e-5)

  # In the soft stage a dropped token's mask value still gets a gradient (what the
  # straight-through estimator needs); the log-bias softmax would give exactly 0.
  method = tiny_sdtp[3]
  assert method.attention_softmax("soft") is sdtp.policy_softmax
  assert method.attention_softmax("hard") is None

  def logit_sum(weight):
    def scaled(index, received, token_mask, hidden, lengths, protected):
      return token_mask * weight, None, None
    return jnp.sum(model.apply({"params": model_params}, **batch, prune_fn=scaled,
                               attention_softmax=method.attention_softmax("soft")).logits)
  grad = jax.grad(logit_sum)(jnp.asarray(dropped))
  assert np.abs(np.asarray(grad)[:, 2]).min() > 0


def test_soft_step_trains_modules_and_freezes_backbone(tiny_sdtp):
  model, model_params, tokenizer, method = tiny_sdtp
  config = _config()
  settings = config.stage_settings.soft
  settings.pruning_learning_rate = 1e-2
  tx = train.make_optimizer(settings, config.train, 10,
                            method.pruning_optimizer(settings, config.train, 10))
  params = {"model": model_params, "pruning": method.init_params(jax.random.PRNGKey(3))}
  state = train.TrainState(step=jnp.array(0, jnp.int32), params=params,
                           opt_state=tx.init(params))
  before = jax.tree.map(np.array, params)
  step = jax.jit(lambda s, b: train.train_step(
      s, b, jax.random.PRNGKey(0), model_params, lambda x: x, model=model, tx=tx,
      method=method, stage="soft", total_steps=10))
  batch = _batch(tokenizer)
  for _ in range(3):
    state, metrics = step(state, batch)
  for name in ("task_loss", "mse", "ranking"):
    assert np.isfinite(float(metrics[name])) and float(metrics[name]) > 0, name
  # The backbone is bit-identical (weight decay and a learning rate of 2e-5 would move it).
  jax.tree.map(np.testing.assert_array_equal, before["model"],
               jax.tree.map(np.asarray, state.params["model"]))
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       state.params["pruning"], before["pruning"])
  assert all(m > 0 for m in jax.tree.leaves(moved))  # every module's every leaf trains


def test_soft_masks_are_cumulative_and_keep_protected(tiny_sdtp):
  model, model_params, tokenizer, method = tiny_sdtp
  params = method.init_params(jax.random.PRNGKey(3))
  batch = tokenizer(helpers.PRUNING_TEXTS, length=32)
  out = model.apply({"params": model_params}, **batch,
                    prune_fn=method.prune_fn(params, "soft", jax.random.PRNGKey(5)),
                    attention_softmax=sdtp.policy_softmax)
  masks = np.stack([np.asarray(m) for m in out.token_masks])  # [layers, batch, seq]
  assert set(np.unique(masks)) == {0.0, 1.0}
  assert (np.diff(masks, axis=0) <= 0).all(), "a pruned token came back"
  special = np.asarray(encoder_lib.protected_tokens(batch["attention_mask"],
                                                    batch["token_type_ids"]))
  assert masks[-1][special].all()
  assert masks[-1].sum() < masks[0].sum()


def test_tiny_run(tiny_sdtp, tmp_path):
  glue_dir = helpers.write_sst2(str(tmp_path / "glue"), n_train=48, n_dev=16)
  config = helpers.tiny_config(glue_dir)
  config.num_devices = 1
  config.stages = ("soft",)  # the teacher is the random initial model: fine here
  config.data.buckets = (32,)
  config.data.per_device_batch_size = 8
  config.data.per_device_eval_batch_size = 16
  config.pruning.method = "sdtp"
  config.pruning.sdtp_keep_ratios = RATIOS
  config.stage_settings.soft.pruning_learning_rate = 1e-2
  config.train.eval_every_steps = 1000
  config.train.max_steps = 4
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  dev = summary["stages"]["soft"]["dev"]["validation"]
  assert summary["method"] == "sdtp"
  # By hand: the hard top-k decisions keep ceil(rho_s n) tokens after layer s = 1..3
  # (never fewer than [CLS] and [SEP]); a layer's attention sees the tokens the layer
  # before kept, its FFN those it keeps itself.
  with open(os.path.join(glue_dir, "SST-2", "dev.tsv"), encoding="utf-8") as f:
    texts = [line.rsplit("\t", 1)[0] for line in f.read().splitlines()[1:]]
  n = np.asarray(tiny_sdtp[2](texts, length=32)["attention_mask"]).sum(-1).tolist()
  kept = np.array([[m] + [max(math.ceil(fractions.Fraction(str(r)) * m), 2)
                          for r in RATIOS] for m in n], np.float64)
  d, d_ff = 32, 64  # configs/tiny.py

  def macs(attn, ffn):
    return (2 * d * attn**2 + 4 * d**2 * attn + 2 * d * d_ff * ffn).sum()

  full = np.repeat(kept[:, :1], 4, axis=1)
  want = macs(np.concatenate([full[:, :1], kept[:, :-1]], 1), kept) / macs(full, full)
  assert dev["relative_flops"] == pytest.approx(want, rel=1e-9)
  assert dev["tokens_kept_per_layer"] == pytest.approx(
      (kept.mean(0) / kept[:, 0].mean()).round(4).tolist(), abs=1e-12)


def test_compacted_equals_masked(tiny_sdtp):
  model, model_params, tokenizer, method = tiny_sdtp
  params = {"model": model_params, "pruning": method.init_params(jax.random.PRNGKey(3))}
  # Chunks of 16, the rest in 8s: both batches (8 x 32 and 2 x 32 slots) run the packed
  # chunk loops, with the two passes per layer of a decision that reads the
  # post-attention state; a short example alone runs as one piece.
  engine = engine_lib.Engine(model, params, method, (8, 16, 32), chunk=16, small_chunk=8)
  # The weights as an argument: closed over, they would be compiled in as constants.
  masked_step = functools.partial(jax.jit(lambda p, b: train.eval_step(
      p, b, model=model, method=method, stage="hard")), params)
  texts = helpers.PRUNING_TEXTS + [a for a, _ in PAIRS]
  pairs = [None] * len(helpers.PRUNING_TEXTS) + [b for _, b in PAIRS]
  for rows in (slice(0, 8), slice(8, 10)):  # single sentences, then pairs
    paired = pairs[rows][0] is not None
    batch = tokenizer(texts[rows], pairs[rows] if paired else None, length=32)
    masked = jax.tree.map(np.asarray, masked_step(batch))
    compacted = engine(batch, return_kept_positions=True)
    np.testing.assert_array_equal(compacted["kept"], masked["kept"])
    np.testing.assert_allclose(compacted["logits"], masked["logits"], atol=EXACT_ATOL)
    np.testing.assert_array_equal(compacted["kept_positions"],
                                  helpers.masked_keep(model, params, method, batch))
    # It really prunes, differently per example, at the configured ratios.
    lengths = masked["length"]
    expected = np.stack([np.maximum(np.ceil(np.float32(r) * lengths - 1e-4),
                                    2 if not paired else 3) for r in RATIOS], -1)
    np.testing.assert_array_equal(compacted["kept"][:, 1:],
                                  np.minimum(expected, lengths[:, None]))
    np.testing.assert_array_equal(compacted["kept"][:, 0], lengths)
    special = np.asarray(encoder_lib.protected_tokens(batch["attention_mask"],
                                                      batch["token_type_ids"]))
    assert compacted["kept_positions"][-1][special].all()  # [CLS] and [SEP] stay
    # Alone (a smaller bucket) or reordered, an example gets the same output.
    for i in (rows.start, rows.stop - 1):
      alone = engine(tokenizer([texts[i]], [pairs[i]] if paired else None))
      np.testing.assert_allclose(alone["logits"][0], compacted["logits"][i - rows.start],
                                 atol=EXACT_ATOL)
      np.testing.assert_array_equal(alone["kept"][0], compacted["kept"][i - rows.start])
    reordered = engine(tokenizer(texts[rows][::-1], pairs[rows][::-1] if paired else None,
                                 length=32))
    np.testing.assert_allclose(reordered["logits"][::-1], compacted["logits"],
                               atol=EXACT_ATOL)
