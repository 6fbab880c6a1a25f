"""Bucketed batches: every example once, order a pure function of (seed, epoch)."""

import numpy as np
import pytest

from tpjax.data import batching


def _data(n=50, seed=0):
  rng = np.random.default_rng(seed)
  ids = [np.arange(1, rng.integers(2, 30) + 1, dtype=np.int32) for _ in range(n)]
  return batching.Encoded(ids, [np.zeros_like(x) for x in ids],
                          rng.integers(0, 2, size=n).astype(np.int32))


def test_normalize_buckets():
  assert batching.normalize_buckets((64, 16, 200, 32), 128) == (16, 32, 64, 128)


def test_epoch_covers_every_example_once_and_is_reproducible():
  data, buckets = _data(), (8, 16, 32)
  plan = batching.epoch_plan(data.lengths, buckets, 4, seed=3, epoch=1)
  seen = np.concatenate([idx for _, idx in plan])
  assert sorted(seen.tolist()) == list(range(len(data)))
  for length, idx in plan:
    assert data.lengths[idx].max() <= length
  again = batching.epoch_plan(data.lengths, buckets, 4, seed=3, epoch=1)
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(plan, again, strict=True))
  other = batching.epoch_plan(data.lengths, buckets, 4, seed=3, epoch=2)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(plan, other, strict=True))
  assert len(plan) == batching.steps_per_epoch(data.lengths, buckets, 4)


def test_resume_start_skips_batches():
  data, buckets = _data(), (8, 16, 32)
  full = list(batching.train_batches(data, buckets, 4, 0, 0, pad_id=0))
  tail = list(batching.train_batches(data, buckets, 4, 0, 0, pad_id=0, start=5))
  assert len(tail) == len(full) - 5
  np.testing.assert_array_equal(full[5]["input_ids"], tail[0]["input_ids"])


def test_eval_batches_pad_with_zero_weight():
  data = _data(n=13)
  batches = list(batching.eval_batches(data, (32,), 4, pad_id=0))
  index = np.concatenate([b["index"] for b in batches])
  weights = np.concatenate([b["weights"] for b in batches])
  assert sorted(index[index >= 0].tolist()) == list(range(13))
  assert weights.sum() == 13 and (weights[index < 0] == 0).all()
  first = batches[0]
  assert first["input_ids"].shape == (4, 32)
  np.testing.assert_array_equal(first["attention_mask"].sum(1)[first["weights"] > 0],
                                data.lengths[first["index"][first["weights"] > 0]])


def test_sorted_eval_batches_cover_every_example_once():
  data = _data(n=40)
  batches = list(batching.eval_batches(data, (8, 32), 4, pad_id=0, sort_by_length=True))
  index = np.concatenate([b["index"] for b in batches])
  assert sorted(index[index >= 0].tolist()) == list(range(40))
  for b in batches:
    real = b["index"][b["index"] >= 0]
    assert np.all(np.diff(data.lengths[real]) >= 0)


def test_too_long_for_buckets():
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    batching.bucket_of(np.array([5, 40]), (8, 16))
