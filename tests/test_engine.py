"""Compacted inference equals masked evaluation, for every method, in any batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax import train
from tpjax.inference import engine as engine_lib
from tpjax.pruning import registry

BUCKETS = (4, 8, 16, 32)
# README states this bound for compacted against masked logits.
EXACT_ATOL = 1e-6


@pytest.fixture(scope="module")
def case():
  return helpers.PruningCase()


@pytest.fixture(scope="module")
def tiny_model(case):
  return case.model, case.params["model"], case.tokenizer


def _method(model, **fields):
  config = helpers.tiny.get_config().pruning
  config.update(fields)
  return registry.get_method(config, model.config)


def _methods(case):
  """Every method on the shared 4-layer model, each with parameters that prune."""
  model = case.model
  live = helpers.PruningCase(score_norm="live")
  return {
      "ltp": (case.method, case.params["pruning"]),
      "ltp_live_norm": (live.method, live.params["pruning"]),
      "threshold": (_method(model, method="threshold", final_threshold=0.0135), {}),
      "topk": (_method(model, method="topk", keep_rate=0.3, topk_full_layers=1), {}),
      "topk_round": (_method(model, method="topk", keep_rate=0.3, topk_full_layers=1,
                             variant="reference"), {}),
  }


METHOD_NAMES = ("ltp", "ltp_live_norm", "threshold", "topk", "topk_round")


def test_shared_case_really_prunes(case):
  kept = case.kept_fraction()
  middle = kept[:, 1:-1].mean()
  assert 0.3 <= middle <= 0.7, middle
  assert (kept[:, 0] == 1).all(), "layer 0 never prunes"
  assert len({tuple(row) for row in kept.round(3)}) > len(kept) // 2, "same per example"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_compacted_equals_masked(case, name):
  model, tokenizer = case.model, case.tokenizer
  method, pruning = _methods(case)[name]
  params = {"model": case.params["model"], "pruning": pruning}
  engine = engine_lib.Engine(model, params, method, BUCKETS)
  texts = case.texts
  batch = tokenizer(texts, length=32)
  masked = train.eval_step(params, batch, model=model, method=method, stage="hard")
  compacted = engine(batch, return_kept_positions=True)
  np.testing.assert_array_equal(compacted["kept"], np.asarray(masked["kept"]))
  diff = np.abs(compacted["logits"] - np.asarray(masked["logits"])).max()
  print(f"{name}: max |compacted - masked| logit difference {diff:.2e}")
  assert diff <= EXACT_ATOL
  # Pruned tokens feed later layers: at least two layers prune, and most tokens go.
  fraction = compacted["kept"] / batch["attention_mask"].sum(-1, keepdims=True)
  assert fraction[:, -1].mean() < 0.7, fraction
  assert (np.diff(compacted["kept"], axis=1) < 0).any(axis=0).sum() >= 2, "one layer"
  np.testing.assert_array_equal(compacted["kept_positions"].sum(-1).T, compacted["kept"])
  assert compacted["kept_positions"][:, :, 0].all()  # [CLS] always kept

  # The same examples alone, reordered, or in a smaller bucket give the same output.
  for i, text in enumerate(texts):
    alone = engine(tokenizer([text]))
    np.testing.assert_allclose(alone["logits"][0], compacted["logits"][i], atol=EXACT_ATOL)
    np.testing.assert_array_equal(alone["kept"][0], compacted["kept"][i])
  reordered = engine(tokenizer(texts[::-1], length=32))
  np.testing.assert_allclose(reordered["logits"][::-1], compacted["logits"], atol=EXACT_ATOL)


def test_no_pruning_path_matches_model(tiny_model):
  model, model_params, tokenizer = tiny_model
  params = {"model": model_params, "pruning": {}}
  engine = engine_lib.Engine(model, params, None, BUCKETS)
  batch = tokenizer(helpers.PRUNING_TEXTS, length=32)
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
