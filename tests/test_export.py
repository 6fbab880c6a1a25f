"""The train step and the engine's compiled function lower for CPU, CUDA and TPU.

`jax.export` with several platforms lowers one program for all of them, so a
construct that only one backend supports (a CPU-only custom call, a host callback)
fails here without the hardware. It does not prove speed or numerics on a GPU/TPU.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from tpjax.training import train
from tpjax.inference import engine as engine_lib

PLATFORMS = ("cpu", "cuda", "tpu")


@pytest.fixture(scope="module")
def case():
  return helpers.pruning_case()


def _chunk_loops(text, span, width):
  """How many `stablehlo.while` ops carry a packed [span, width] float32 buffer: only
  the engine's chunk loops do (jnp.searchsorted's loops carry integer vectors)."""
  carried = re.findall(r"stablehlo\.while\(.*\) : (.*)", text)
  return sum(f"tensor<{span}x{width}xf32>" in types for types in carried)


def test_engine_exports_for_every_platform(case):
  # Chunks of 32 and the rest in 8s: 8 rows x 32 (256 slots) run the loops; 1 row
  # (32 slots, one chunk) runs each block as one piece.
  engine = engine_lib.Engine(case.model, case.params, case.method, (32,), chunk=32,
                             small_chunk=8)
  width, layers = case.model.config.hidden_size, case.model.config.num_hidden_layers
  fn = jax.jit(functools.partial(engine._run, with_positions=False))  # pylint: disable=protected-access
  for texts in (case.texts, case.texts[:1]):
    batch = case.tokenizer(texts, length=32)
    inputs = tuple(batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    exported = jax.export.export(fn, platforms=PLATFORMS)(engine.weights, *inputs)
    assert exported.platforms == PLATFORMS
    text = exported.mlir_module()
    assert "custom_call @xla_python" not in text  # no host callback
    rows = len(texts)
    if rows > 1:
      # The real tokens fill more than two chunks, so full chunks and the rest run.
      assert batch["attention_mask"].sum() > 2 * engine.chunk
      # Two on-device loops (full chunks, then the rest) for the embedding pass and
      # for each layer: the loop is in the program, not on the host.
      assert _chunk_loops(text, rows * 32, width) == 2 * (layers + 1)
    else:
      assert _chunk_loops(text, 32, width) == 0
    # The exported program runs here and matches the engine.
    out = exported.call(engine.weights, *inputs)
    expected = engine(batch)
    np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-6)
    np.testing.assert_array_equal(out["kept"], expected["kept"])


def test_train_step_exports_for_every_platform(case):
  model, method = case.model, case.method
  # SGD: an update proportional to its gradient. (Adam's first update is lr * sign(g),
  # so the key biases' float-noise gradients would flip between any two programs.)
  tx = optax.sgd(0.1)
  params = {"model": case.params["model"], "pruning": case.params["pruning"]}
  state = train.TrainState(step=jnp.array(0, jnp.int32), params=params,
                           opt_state=tx.init(params))
  batch = dict(case.tokenizer(case.texts, length=32))
  batch["labels"] = np.array([1, 0, 0, 1, 0, 0, 1, 1], np.int32)
  batch["weights"] = np.ones((len(case.texts),), np.float32)
  step = lambda: jax.jit(functools.partial(
      train.train_step, teacher=None, reduce=lambda x: x, model=model, tx=tx,
      method=method, stage="soft", total_steps=10))
  rng = jax.random.PRNGKey(0)
  exported = jax.export.export(step(), platforms=PLATFORMS)(state, batch, rng)
  assert exported.platforms == PLATFORMS
  # The exported step, run here, is the step traced on its own: same parameters,
  # optimiser state and metrics (dropout included, from the rng argument).
  got = exported.call(state, batch, rng)
  want = step()(state, batch, rng)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
               got, want)
  moved = lambda p: float(jnp.abs(p(got[0].params) - p(state.params)).max())
  assert moved(lambda p: p["model"]["classifier"]["kernel"]) > 1e-4  # a real step
  assert moved(lambda p: p["pruning"]["delta"][1:]) > 0  # thresholds learn too
