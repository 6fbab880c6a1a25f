"""Mixed precision: bfloat16 dot operands, float32 accumulation, float32 everywhere else."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax.inference import engine as engine_lib
from tpjax.inference import generation
from tpjax.models import decoder as decoder_lib
from tpjax.models import precision
from tpjax.training import checkpoints
from tpjax.training import config_checks
from tpjax.training import train

_DOT = re.compile(r"stablehlo\.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> "
                  r"(tensor<[^>]*>)")


def _dots(lowered_text: str) -> list:
  """(lhs, rhs, result) element types of every matrix-matrix dot in a lowered program.

  Matrix-vector products (a [batch, seq] result: attention received per token and the
  importance scores built on it) are left out: they stay float32 by design."""
  found = []
  for m in _DOT.finditer(lowered_text):
    if m.group(3).count("x") == 2:  # tensor<AxBxT>: a [batch, seq] result
      continue
    found.append(tuple(t.rsplit("x", 1)[-1].rstrip(">") for t in m.groups()))
  return found


@pytest.fixture(scope="module")
def case():
  return helpers.pruning_case()


def test_every_dot_takes_bf16_and_accumulates_in_f32_forward_and_backward(case):
  model = precision.with_dtype(case.model, "bfloat16")
  batch = case.tokenizer(case.texts, length=32)

  def loss(params):
    out = model.apply({"params": params}, **batch,
                      prune_fn=case.method.prune_fn(case.params["pruning"], "hard"))
    return jnp.sum(out.logits ** 2)

  dots = _dots(jax.jit(jax.grad(loss)).lower(case.params["model"]).as_text())
  # 4 layers x (3 QKV + 2 attention + out + 2 FFN) + pooler + classifier, forward;
  # the backward has two per forward dot, less those of inputs that need no gradient.
  assert len(dots) >= 2 * 4 * 8, len(dots)
  assert set(dots) == {("bf16", "bf16", "f32")}, set(dots)


def test_float32_stays_float32(case):
  batch = case.tokenizer(case.texts, length=32)
  text = jax.jit(lambda p: case.model.apply({"params": p}, **batch).logits).lower(
      case.params["model"]).as_text()
  assert set(_dots(text)) == {("f32", "f32", "f32")}


def test_bf16_close_to_f32_and_gradients_match(case):
  bf16 = precision.with_dtype(case.model, "bfloat16")
  batch = case.tokenizer(case.texts, length=32)

  def run(model, params):
    return model.apply({"params": params}, **batch).logits

  def grads(model):
    return jax.grad(lambda p: jnp.sum(run(model, p) ** 2))(case.params["model"])

  full, half = run(case.model, case.params["model"]), run(bf16, case.params["model"])
  scale = float(jnp.abs(full).max())
  diff = float(jnp.abs(full - half).max())
  print(f"max |bf16 - f32| logits {diff:.2e} (max |logit| {scale:.2e})")
  assert 0 < diff < 0.03 * scale  # rounded, so not equal, but close
  g32, g16 = grads(case.model), grads(bf16)
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16), strict=True):
    assert b.dtype == jnp.float32
    cos = float(jnp.vdot(a.ravel(), b.ravel()) /
                (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30))
    assert cos > 0.99 or float(jnp.abs(a).max()) < 1e-6, cos


def test_training_in_bf16_keeps_float32_parameters(tmp_path):
  config = helpers.tiny_config(helpers.write_sst2(str(tmp_path)), max_steps=6)
  config.model.compute_dtype = "bfloat16"
  # The dtypes depend on neither the device count nor the buckets: one device and one
  # bucket, so one train and one eval program to compile, not one per bucket on 8.
  config.num_devices = 1
  config.data.buckets = (32,)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["compute_dtype"] == "bfloat16"
  ckpts = checkpoints.StageCheckpoints(str(tmp_path / "run" / "finetune"), read_only=True)
  restored = ckpts.restore_best()
  ckpts.close()
  dtypes = {x.dtype for x in jax.tree.leaves(restored["params"]["model"])}
  assert dtypes == {np.dtype("float32")}, dtypes
  assert np.isfinite(summary["dev"]["validation"]["accuracy"])


def test_engine_in_bf16_matches_masked_bf16_model(case):
  """The packed engine computes the same bf16 dots as the padded model, so their keep
  decisions agree and logits differ only by accumulation order."""
  model = precision.with_dtype(case.model, "bfloat16")
  engine = engine_lib.Engine(model, case.params, case.method, (8, 16, 32), chunk=8)
  batch = case.tokenizer(case.texts, length=32)
  masked = train.eval_step(case.params, batch, model=model, method=case.method,
                           stage="hard")
  compacted = engine(batch)
  agree = np.mean(compacted["kept"] == np.asarray(masked["kept"]))
  assert agree >= 0.9, agree
  assert np.abs(compacted["logits"] - np.asarray(masked["logits"])).max() < 0.05
  # The engine stores its dense kernels in bf16 (half the bytes, no per-call cast).
  assert engine.weights["layers"][0]["qkv"]["kernel"].dtype == jnp.bfloat16
  assert engine.weights["layers"][0]["qkv"]["bias"].dtype == jnp.float32


def test_decoder_bf16_close_and_generator_stores_bf16_weights():
  config = decoder_lib.DecoderConfig(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
      max_position_embeddings=256)
  model = decoder_lib.DecoderModel(config)
  params = decoder_lib.init_params(model, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 64)
  full = model.apply({"params": params}, ids)
  half_model = precision.with_dtype(model, "bfloat16")
  half = half_model.apply({"params": params}, ids)
  assert 0 < float(jnp.abs(full - half).max()) < 0.03 * float(jnp.abs(full).max())
  text = jax.jit(lambda p: half_model.apply({"params": p}, ids)).lower(params).as_text()
  assert set(_dots(text)) == {("bf16", "bf16", "f32")}
  gen = generation.Generator(half_model, params, buckets=(16,))
  assert gen.params["model"]["embed_tokens"]["embedding"].dtype == jnp.bfloat16
  assert gen.params["model"]["norm"]["weight"].dtype == jnp.float32
  greedy = gen.generate([[1, 2, 3]], 4)
  assert len(greedy[0]) == 4


def test_auto_picks_bf16_only_with_a_matrix_engine(monkeypatch):
  assert precision.default_dtype("gpu") == "bfloat16"
  assert precision.default_dtype("tpu") == "bfloat16"
  monkeypatch.setattr(precision, "_cpu_has_bf16_engine", lambda: True)
  assert precision.default_dtype("cpu") == "bfloat16"
  monkeypatch.setattr(precision, "_cpu_has_bf16_engine", lambda: False)
  assert precision.default_dtype("cpu") == "float32"
  assert precision.resolve("auto") == precision.default_dtype()


def test_bad_compute_dtype_is_one_sentence(tmp_path):
  config = helpers.tiny_config(helpers.write_sst2(str(tmp_path)))
  config.model.compute_dtype = "float16"
  problems = config_checks.problems(config)
  assert any("model.compute_dtype" in p and "float16" in p for p in problems), problems
  with pytest.raises(ValueError, match="float16"):
    precision.check("float16")
  with pytest.raises(ValueError, match="float16"):
    dataclasses.replace(helpers.pruning_case().model.config, compute_dtype="float16")
