"""Compacted inference equals masked evaluation, for every method, in any batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from tpjax import train
from tpjax.inference import engine as engine_lib
from tpjax.pruning import registry

TEXTS = ["good film", "the plot is very dull and the acting awful but the music is fine",
         "a", "not a great story but fine acting", "the film was very very very dull",
         "awful", "great great great film with a very good plot and fine acting too"]
BUCKETS = (4, 8, 16, 32)


@pytest.fixture(scope="module")
def tiny_model():
  config = tiny.get_config()
  config.model.overrides.num_hidden_layers = 4  # top-k keeps the first 3 layers whole
  model, params, tokenizer = train.build_model(config, 2, jax.random.PRNGKey(7))
  return model, params, tokenizer


def _method(model, **fields):
  config = tiny.get_config().pruning
  config.update(fields)
  method = registry.get_method(config, model.config)
  return method


METHODS = {
    "ltp": dict(method="ltp", final_threshold=0.02),
    "threshold": dict(method="threshold", final_threshold=0.03),
    "topk": dict(method="topk", keep_rate=0.3),
    "ltp_live_norm": dict(method="ltp", final_threshold=0.5, score_norm="live"),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compacted_equals_masked(tiny_model, name):
  model, model_params, tokenizer = tiny_model
  method = _method(model, **METHODS[name])
  pruning = method.init_params(jax.random.PRNGKey(0))
  if "delta" in pruning:
    pruning = {"delta": jnp.array([0.0, 0.003, 0.003, 0.003])}
  params = {"model": model_params, "pruning": pruning}
  engine = engine_lib.Engine(model, params, method, BUCKETS)
  batch = tokenizer(TEXTS, length=32)
  masked = train.eval_step(params, batch, model=model, method=method, stage="hard")
  compacted = engine(batch, return_kept_positions=True)
  np.testing.assert_array_equal(compacted["kept"], np.asarray(masked["kept"]))
  diff = np.abs(compacted["logits"] - np.asarray(masked["logits"])).max()
  print(f"{name}: max |compacted - masked| logit difference {diff:.2e}")
  assert diff <= 1e-4
  assert compacted["kept"][:, -1].sum() < batch["attention_mask"].sum(), "no pruning"
  np.testing.assert_array_equal(compacted["kept_positions"].sum(-1).T, compacted["kept"])
  assert compacted["kept_positions"][:, :, 0].all()  # [CLS] always kept

  # The same examples alone, reordered, or in a smaller bucket give the same output.
  for i, text in enumerate(TEXTS):
    alone = engine(tokenizer([text]))
    np.testing.assert_allclose(alone["logits"][0], compacted["logits"][i], atol=1e-5)
    np.testing.assert_array_equal(alone["kept"][0], compacted["kept"][i])
  reordered = engine(tokenizer(TEXTS[::-1], length=16))
  np.testing.assert_allclose(reordered["logits"][::-1], compacted["logits"], atol=1e-5)


def test_no_pruning_path_matches_model(tiny_model):
  model, model_params, tokenizer = tiny_model
  params = {"model": model_params, "pruning": {}}
  engine = engine_lib.Engine(model, params, None, BUCKETS)
  batch = tokenizer(TEXTS, length=32)
  expected = model.apply({"params": model_params}, **batch).logits
  out = engine(batch)
  np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
  np.testing.assert_array_equal(out["kept"][:, 0], batch["attention_mask"].sum(-1))


def test_compact_keeps_order_and_cls():
  hidden = jnp.arange(2 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 1)
  mask = jnp.array([[1.0, 0, 1, 0, 1], [1, 1, 0, 0, 0]])
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  h, m, p = engine_lib.compact(hidden, mask, positions, 3)
  np.testing.assert_array_equal(p, [[0, 2, 4], [0, 1, 2]])
  np.testing.assert_array_equal(m, [[1, 1, 1], [1, 1, 0]])
  np.testing.assert_array_equal(h[..., 0], [[0, 2, 4], [5, 6, 7]])


def test_warm_up_counts_segments(tiny_model):
  model, model_params, _ = tiny_model
  method = _method(model, method="threshold")
  engine = engine_lib.Engine(model, {"model": model_params, "pruning": {}}, method, (4, 8))
  # first segment per bucket (2) + layers x bucket pairs (4 x 3)
  assert engine.warm_up(2) == 2 + 4 * 3
  with pytest.raises(ValueError, match="exceed the largest bucket"):
    engine.bucket_for(9)
