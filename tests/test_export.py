"""The train step and the engine's compiled function lower for CPU, CUDA and TPU.

`jax.export` with several platforms lowers one program for all of them, so a
construct that only one backend supports (a CPU-only custom call, a host callback)
fails here without the hardware. It does not prove speed or numerics on a GPU/TPU.
"""

import functools

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
  return helpers.PruningCase()


def test_engine_exports_for_every_platform(case):
  engine = engine_lib.Engine(case.model, case.params, case.method, (32,))
  batch = case.tokenizer(case.texts, length=32)
  inputs = tuple(batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
  fn = jax.jit(functools.partial(engine._run, with_positions=False))  # pylint: disable=protected-access
  exported = jax.export.export(fn, platforms=PLATFORMS)(engine.weights, *inputs)
  assert exported.platforms == PLATFORMS
  text = exported.mlir_module()
  assert "stablehlo.while" in text  # the on-device chunk loop, not a host loop
  assert "custom_call @xla_python" not in text  # no host callback
  # The exported program runs here and matches the engine.
  out = exported.call(engine.weights, *inputs)
  np.testing.assert_allclose(out["logits"], engine(batch)["logits"], atol=1e-6)


def test_train_step_exports_for_every_platform(case):
  model, method = case.model, case.method
  tx = optax.adam(1e-3)
  params = {"model": case.params["model"], "pruning": method.init_params(None)}
  state = train.TrainState(step=jnp.array(0, jnp.int32), params=params,
                           opt_state=tx.init(params))
  batch = dict(case.tokenizer(case.texts, length=32))
  batch["labels"] = np.zeros((len(case.texts),), np.int32)
  batch["weights"] = np.ones((len(case.texts),), np.float32)
  step = jax.jit(functools.partial(train.train_step, teacher=None, reduce=lambda x: x,
                                   model=model, tx=tx, method=method, stage="soft",
                                   total_steps=10))
  exported = jax.export.export(step, platforms=PLATFORMS)(state, batch,
                                                          jax.random.PRNGKey(0))
  assert exported.platforms == PLATFORMS
