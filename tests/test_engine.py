"""Compacted inference equals masked evaluation, for every method, in any batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tpjax.training import train
from tpjax.inference import engine as engine_lib
from tpjax.pruning import registry

BUCKETS = (4, 8, 16, 32)
# README states this bound for compacted against masked logits.
EXACT_ATOL = 1e-6


@pytest.fixture(scope="module")
def case():
  return helpers.pruning_case()


@pytest.fixture(scope="module")
def tiny_model(case):
  return case.model, case.params["model"], case.tokenizer


def _method(model, **fields):
  config = helpers.tiny.get_config().pruning
  config.update(fields)
  return registry.get_method(config, model.config)


@pytest.fixture(scope="module")
def methods(case):
  """Every method on the shared 4-layer model, each with parameters that prune: built
  once for the module (the live-norm case calibrates its own thresholds), not once per
  parametrisation."""
  model = case.model
  live = helpers.pruning_case(score_norm="live")
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
  """Layer l keeps round(PRUNING_KEEP[l] x) of the x live tokens other than [CLS],
  counted over the batch, as `helpers.PruningCase` set its thresholds: 70%, 49% and
  34% of them after layers 1-3, a different fraction in each example."""
  batch = case.tokenizer(case.texts, length=32)
  keep = helpers.masked_keep(case.model, case.params, case.method, batch)
  live, rows = int(batch["attention_mask"].sum()), len(case.texts)
  for layer, rate in enumerate(helpers.PRUNING_KEEP):
    live -= round((1 - rate) * (live - rows))
    assert keep[layer].sum() == live, layer
  kept = case.kept_fraction()
  assert (kept[:, 0] == 1).all(), "layer 0 never prunes"
  assert len({tuple(row) for row in kept.round(3)}) > len(kept) // 2, "same per example"


def _known_kept(name, lengths):
  """<int>[batch, layers] tokens the top-k methods keep, by hand: layer l keeps
  ceil (round, half to even, for the reference) of rate_l n of the n real tokens,
  rates 1, 1 - 0.7 / 3, 1 - 1.4 / 3 and 0.3 (one full layer, then linear to 0.3),
  never more than the layer before and never fewer than [CLS]."""
  rates = np.array([1.0, 1 - 0.7 / 3, 1 - 1.4 / 3, 0.3], np.float32)  # as the method's
  k = (np.round if name == "topk_round" else np.ceil)(
      rates[None] * np.asarray(lengths, np.float32)[:, None])
  return np.maximum(np.minimum.accumulate(k, axis=1), 1).astype(int)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_compacted_equals_masked(case, methods, name):
  model, tokenizer = case.model, case.tokenizer
  method, pruning = methods[name]
  params = {"model": case.params["model"], "pruning": pruning}
  engine = engine_lib.Engine(model, params, method, BUCKETS, chunk=8)
  texts = case.texts
  batch = tokenizer(texts, length=32)
  masked = train.eval_step(params, batch, model=model, method=method, stage="hard")
  compacted = engine(batch, return_kept_positions=True)
  np.testing.assert_array_equal(compacted["kept"], np.asarray(masked["kept"]))
  diff = np.abs(compacted["logits"] - np.asarray(masked["logits"])).max()
  print(f"{name}: max |compacted - masked| logit difference {diff:.2e}")
  assert diff <= EXACT_ATOL
  # The same tokens, position by position, as the masked model keeps after each layer.
  np.testing.assert_array_equal(compacted["kept_positions"],
                                helpers.masked_keep(model, params, method, batch))
  assert compacted["kept_positions"][:, :, 0].all()  # [CLS] always kept
  # Pruned tokens feed later layers: at least two layers prune, and most tokens go.
  fraction = compacted["kept"] / batch["attention_mask"].sum(-1, keepdims=True)
  assert fraction[:, -1].mean() < 0.7, fraction
  assert (np.diff(compacted["kept"], axis=1) < 0).any(axis=0).sum() >= 2, "one layer"
  if name.startswith("topk"):
    np.testing.assert_array_equal(compacted["kept"],
                                  _known_kept(name, masked["length"]))

  # Alone (batch 1, padded to its own bucket), reordered, or padded to a smaller input
  # bucket, an example gets the same output: no dependence on batch, neighbours,
  # order or bucket.
  # (Every example for LTP; two of different buckets for the other methods, which
  # keeps the test's compile time down.)
  for i, text in enumerate(texts):
    if name != "ltp" and i not in (0, 1):
      continue
    length = engine.bucket_for(int(batch["attention_mask"][i].sum()))
    alone = engine(tokenizer([text], length=length))
    np.testing.assert_allclose(alone["logits"][0], compacted["logits"][i], atol=EXACT_ATOL)
    np.testing.assert_array_equal(alone["kept"][0], compacted["kept"][i])
  reordered = engine(tokenizer(texts[::-1], length=32))
  np.testing.assert_allclose(reordered["logits"][::-1], compacted["logits"], atol=EXACT_ATOL)
  shorter = engine(tokenizer(texts[:3], length=16))
  np.testing.assert_allclose(shorter["logits"], compacted["logits"][:3], atol=EXACT_ATOL)


def test_chunk_size_does_not_change_results(case):
  """Chunks of 8, chunks of 32 with the rest in 8s, or one piece (the whole batch
  fits one chunk of 256)."""
  batch = case.tokenizer(case.texts, length=32)
  outs = [engine_lib.Engine(case.model, case.params, case.method, BUCKETS, chunk=c,
                            small_chunk=s)(batch)
          for c, s in ((8, 8), (32, 8), (256, 32))]
  for out in outs[1:]:
    np.testing.assert_array_equal(outs[0]["kept"], out["kept"])
    np.testing.assert_allclose(outs[0]["logits"], out["logits"], atol=EXACT_ATOL)


def test_engine_pads_any_right_padded_batch_to_its_own_grid(case):
  """However the caller pads (tight, wide, with empty rows), the engine runs the same
  bucket and rows and returns the same outputs, shaped like the input."""
  engine = engine_lib.Engine(case.model, case.params, case.method, BUCKETS, chunk=8)
  texts = case.texts[:5]
  longest = max(int(case.tokenizer([t], length=32)["attention_mask"].sum()) for t in texts)
  tight = engine(case.tokenizer(texts, length=longest), return_kept_positions=True)
  wide = engine(case.tokenizer(texts + [""] * 3, length=32), return_kept_positions=True)
  assert tight["logits"].shape[0] == 5 and wide["logits"].shape[0] == 8
  assert tight["kept_positions"].shape[1:] == (5, longest)
  np.testing.assert_array_equal(wide["kept_positions"][:, :5, longest:], False)
  np.testing.assert_array_equal(wide["kept_positions"][:, :5, :longest],
                                tight["kept_positions"])
  np.testing.assert_allclose(wide["logits"][:5], tight["logits"], atol=EXACT_ATOL)
  # 5 and 8 rows both run as 8 rows, at the bucket of the longest example.
  assert {shape for shape, _ in engine.compile_seconds} == {
      (8, engine.bucket_for(longest))}
  left = case.tokenizer(texts, length=32)
  left["attention_mask"] = left["attention_mask"][:, ::-1].copy()
  with pytest.raises(ValueError, match="right-padded"):
    engine(left)
  assert [engine_lib.padded_rows(n) for n in (1, 2, 3, 5, 9, 32)] == [1, 2, 4, 8, 16, 32]
  assert engine_lib.inference_buckets(130) == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96,
                                               112, 128, 130)


def test_compaction_and_row_view():
  # Packed layout of three rows with 2, 0 and 3 live tokens: 0 1 | | 2 3 4.
  start, count, seq, span = jnp.array([0, 2, 2]), jnp.array([2, 0, 3]), 4, 8
  np.testing.assert_array_equal(engine_lib.flat_slots(start, count, seq, span)[:5],
                                [0, 1, 8, 9, 10])
  packed = jnp.arange(span, dtype=jnp.float32)[:, None] + 1
  np.testing.assert_array_equal(engine_lib.row_view(packed, start, count, seq)[..., 0],
                                [[1, 2, 0, 0], [0, 0, 0, 0], [3, 4, 5, 0]])
  # Keep slot 1 of row 0 and slots 0 and 2 of row 2: packed tokens 1, 2 and 4.
  keep = jnp.array([[False, True, False, False], [False] * 4, [True, False, True, False]])
  source, slot, order, new_start, total = engine_lib.compaction(keep, start, span)
  assert int(total) == 3
  np.testing.assert_array_equal(source[:3], [1, 2, 4])
  np.testing.assert_array_equal(slot[:3], [1, 8, 10])  # row 0 slot 1, row 2 slots 0, 2
  np.testing.assert_array_equal(new_start, [0, 1, 1])
  np.testing.assert_array_equal(order[2, :2], [0, 2])  # kept slots first, in order


def test_one_compiled_function_per_shape_and_one_dispatch_per_batch(case):
  """A batch is one call of one compiled function, with no host callback inside."""
  engine = engine_lib.Engine(case.model, case.params, case.method, (16, 32))
  batch = case.tokenizer(case.texts, length=32)
  calls, forward = [], engine._forward  # pylint: disable=protected-access
  engine._forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # pylint: disable=protected-access
  engine(batch)
  assert len(calls) == 1  # no per-layer dispatch (the old engine made 1 + layers)
  engine._forward = forward  # pylint: disable=protected-access
  engine(case.tokenizer(case.texts[::-1], length=32))  # same shape: no new function
  assert engine.compiled_functions == 1
  assert engine.warm_up(len(case.texts)) == 2  # one per input bucket
  with pytest.raises(ValueError, match="exceed the largest bucket"):
    engine.bucket_for(33)
  # Loop counts are device values: no callback to the host inside the function.
  inputs = [batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
  jaxpr = jax.make_jaxpr(functools.partial(engine._run, with_positions=False))(  # pylint: disable=protected-access
      engine.weights, *inputs)
  assert "callback" not in str(jaxpr)
  assert "cond" in str(jaxpr)  # block sizes chosen on device (loops for larger inputs)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed_keep_all"])
def test_no_pruning_path_matches_model(tiny_model, packed):
  """The dense unpruned path, and the packed path under a rule that keeps everything."""
  model, model_params, tokenizer = tiny_model
  params = {"model": model_params, "pruning": {}}
  method = _method(model, method="threshold", final_threshold=-1.0) if packed else None
  engine = engine_lib.Engine(model, params, method, BUCKETS, chunk=8)
  batch = tokenizer(helpers.PRUNING_TEXTS, length=32)
  expected = model.apply({"params": model_params}, **batch).logits
  out = engine(batch)
  np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
  np.testing.assert_array_equal(out["kept"][:, 0], batch["attention_mask"].sum(-1))

