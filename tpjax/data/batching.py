"""Static-shape batches: examples tokenized once, grouped into a few bucket lengths.

Training batches hold examples of one bucket, padded to that bucket's length; the
batch order is a pure function of (seed, epoch), so a resumed run sees the same batches.
Partial batches are filled with weight-0 rows, so no example is dropped or repeated.
"""

import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np

from tpjax.data import glue
from tpjax.data import tokenization


@dataclasses.dataclass
class Encoded:
  """A tokenized split: ragged token ids, their type ids, labels."""
  ids: list[np.ndarray]
  type_ids: list[np.ndarray]
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(x) for x in self.ids], np.int32)


def encode(tokenizer: tokenization.Tokenizer, examples: glue.Examples) -> Encoded:
  encodings = tokenizer.encode(examples.text_a, examples.text_b)
  return Encoded(ids=[np.asarray(e.ids, np.int32) for e in encodings],
                 type_ids=[np.asarray(e.type_ids, np.int32) for e in encodings],
                 labels=np.asarray(examples.labels))


def load_split(config, tokenizer: tokenization.Tokenizer, split: str,
               limit: Optional[int]) -> Encoded:
  """The config's task split (`config.data` says where from), first `limit` examples."""
  examples = glue.load_examples(config.task, split, glue_dir=config.data.glue_dir or None,
                                source=config.data.source)
  if limit is not None:
    examples = glue.Examples(examples.text_a[:limit],
                             examples.text_b[:limit] if examples.text_b else None,
                             examples.labels[:limit])
  return encode(tokenizer, examples)


def subset(data: Encoded, indices: Sequence[int]) -> Encoded:
  """The examples at `indices`, in that order."""
  return Encoded(ids=[data.ids[i] for i in indices],
                 type_ids=[data.type_ids[i] for i in indices],
                 labels=data.labels[np.asarray(indices, np.int64)])


def selection_indices(n: int, fraction: float, max_examples: int, seed: int) -> np.ndarray:
  """Which of n training examples are held out for selection: a seeded sample.

  round(fraction * n) examples (at least 1 when fraction > 0), at most `max_examples`
  (0: no cap), drawn by a generator seeded with `seed` alone, so the slice is the
  same for every run of a task with the same n, whatever its training seed.

  Returns:
    <int64>[k] sorted indices; empty when fraction is 0.
  """
  if fraction <= 0 or n == 0:
    return np.zeros((0,), np.int64)
  k = max(1, int(round(fraction * n)))
  if max_examples:
    k = min(k, max_examples)
  k = min(k, n - 1)  # leave something to train on
  order = np.random.default_rng([seed, n]).permutation(n)
  return np.sort(order[:k])


def hold_out(data: Encoded, fraction: float, max_examples: int,
             seed: int) -> tuple[Encoded, Optional[Encoded]]:
  """Splits a training set into (what is trained on, the held-out selection slice).

  The slice (`selection_indices`) picks checkpoints and settings, so dev is looked at
  only once, at the selected point. Training keeps the rest in their original order.
  Returns (data, None) when fraction is 0.
  """
  held = selection_indices(len(data), fraction, max_examples, seed)
  if not held.size:
    return data, None
  keep = np.setdiff1d(np.arange(len(data)), held)
  return subset(data, keep), subset(data, held)


def load_train(config, tokenizer: tokenization.Tokenizer
               ) -> tuple[Encoded, Optional[Encoded]]:
  """The config's training set, split into (what is trained on, the selection slice).

  The one place that reproduces a run's slice: training and every sweep over a
  trained run call it with the run's config, so they hold out the same examples
  (the first `max_train_examples` training examples, then `hold_out` with the
  `selection_*` fields). The slice is None when `selection_fraction` is 0 or absent
  (a config written before the slice existed).
  """
  data = load_split(config, tokenizer, "train", config.data.get("max_train_examples"))
  return hold_out(data, config.data.get("selection_fraction", 0.0),
                  config.data.get("selection_max_examples", 0),
                  config.data.get("selection_seed", 0))


def normalize_buckets(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
  """Sorted bucket lengths up to max_length, always ending at max_length."""
  kept = sorted({b for b in buckets if 0 < b < max_length})
  return tuple(kept) + (max_length,)


def bucket_of(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
  """Index of the smallest bucket that holds each length: <int32>[n] -> <int32>[n]."""
  if lengths.size and lengths.max() > buckets[-1]:
    raise ValueError(f"A sequence of {lengths.max()} tokens exceeds the largest bucket "
                     f"{buckets[-1]}.")
  return np.searchsorted(np.asarray(buckets), lengths, side="left").astype(np.int32)


def make_batch(data: Encoded, indices: Sequence[int], batch_size: int, length: int,
               pad_id: int) -> dict[str, np.ndarray]:
  """Pads the examples at `indices` to [batch_size, length]; filler rows weigh 0.

  Returns:
    input_ids, attention_mask, token_type_ids: <int32>[batch, length];
    labels: [batch]; weights: <float32>[batch]; index: <int32>[batch] (-1 for filler).
  """
  ids = np.full((batch_size, length), pad_id, np.int32)
  mask = np.zeros((batch_size, length), np.int32)
  types = np.zeros((batch_size, length), np.int32)
  labels = np.zeros((batch_size,), data.labels.dtype)
  weights = np.zeros((batch_size,), np.float32)
  index = np.full((batch_size,), -1, np.int32)
  for row, i in enumerate(indices):
    n = len(data.ids[i])
    ids[row, :n] = data.ids[i]
    mask[row, :n] = 1
    types[row, :n] = data.type_ids[i]
    labels[row] = data.labels[i]
    weights[row] = 1.0
    index[row] = i
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
          "labels": labels, "weights": weights, "index": index}


def epoch_plan(lengths: np.ndarray, buckets: Sequence[int], batch_size: int, seed: int,
               epoch: int) -> list[tuple[int, np.ndarray]]:
  """The training batches of one epoch as (bucket length, example indices).

  Examples are shuffled, grouped by bucket, chunked, and the chunks shuffled again;
  everything is drawn from a generator seeded by (seed, epoch).
  """
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(lengths))
  which = bucket_of(lengths[order], buckets)
  plan = []
  for b, length in enumerate(buckets):
    members = order[which == b]
    for start in range(0, len(members), batch_size):
      plan.append((length, members[start:start + batch_size]))
  return [plan[i] for i in rng.permutation(len(plan))]


def steps_per_epoch(lengths: np.ndarray, buckets: Sequence[int], batch_size: int) -> int:
  counts = np.bincount(bucket_of(lengths, buckets), minlength=len(buckets))
  return int(np.sum(-(-counts // batch_size)))


def train_batches(data: Encoded, buckets: Sequence[int], batch_size: int, seed: int,
                  epoch: int, pad_id: int, start: int = 0) -> Iterator[dict]:
  """Yields an epoch's batches from batch number `start` on (for resuming)."""
  for length, indices in epoch_plan(data.lengths, buckets, batch_size, seed, epoch)[start:]:
    yield make_batch(data, indices, batch_size, length, pad_id)


def eval_batches(data: Encoded, buckets: Sequence[int], batch_size: int,
                 pad_id: int, limit: Optional[int] = None,
                 sort_by_length: bool = False) -> Iterator[dict]:
  """Every example exactly once, grouped by bucket; `index` maps rows back.

  With `sort_by_length`, examples of similar length share a batch, so a pruned batch's
  longest kept row (which sets its compacted length) is close to the others.
  """
  n = len(data) if limit is None else min(limit, len(data))
  lengths = data.lengths[:n]
  which = bucket_of(lengths, buckets)
  for b, length in enumerate(buckets):
    members = np.flatnonzero(which == b)
    if sort_by_length:
      members = members[np.argsort(lengths[members], kind="stable")]
    for start in range(0, len(members), batch_size):
      yield make_batch(data, members[start:start + batch_size], batch_size, length, pad_id)
