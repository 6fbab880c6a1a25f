"""Predictions for text lines, one record per line (behind `python -m tpjax.predict`).

Input is text, one example per line; for sentence-pair tasks the two texts are
separated by a tab. Output lines come in input order. A bad line (empty, invalid
UTF-8, or the wrong number of fields) gets an output line with an "error" field and
never stops the run or shifts other lines; over-long inputs are truncated and marked.
"""

from typing import IO, Iterator, Optional

import numpy as np

from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import engine as engine_lib
from tpjax.inference import loading

def parse_line(raw: bytes, pair: bool) -> tuple[Optional[tuple], Optional[str]]:
  """Returns ((text_a, text_b or None), None) or (None, error message)."""
  try:
    line = raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    return None, f"invalid UTF-8 at byte {e.start}"
  if not line.strip():
    return None, "empty input"
  if not pair:
    return (line, None), None
  fields = line.split("\t")
  if len(fields) != 2:
    return None, f"expected 2 tab-separated texts for a pair task, got {len(fields)}"
  return (fields[0], fields[1]), None


def chunks(stream: IO[bytes], size: int) -> Iterator[list[bytes]]:
  chunk = []
  for raw in stream:
    chunk.append(raw)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


class Predictor:
  """Tokenizes, buckets and runs lines through the compaction engine."""

  def __init__(self, run: loading.TrainedRun, batch_size: int, prune: bool = True):
    self.run = run
    self.info = glue.TASKS[run.config.task]
    self.pair = len(self.info.text_keys) == 2
    self.batch_size = batch_size
    method = run.method if prune and run.prune_stage == "hard" else None
    self.engine = engine_lib.Engine(run.model, run.params, method,
                                    engine_lib.inference_buckets(run.config.data.max_length))

  def predict_lines(self, lines: list[bytes], first_line: int,
                    show_kept: bool = False) -> list[dict]:
    results = [None] * len(lines)
    texts, rows = [], []
    for i, raw in enumerate(lines):
      parsed, error = parse_line(raw, self.pair)
      if error:
        results[i] = {"line": first_line + i, "error": error}
      else:
        texts.append(parsed)
        rows.append(i)
    if texts:
      tok = self.run.tokenizer
      encodings = tok.encode([t[0] for t in texts],
                             [t[1] for t in texts] if self.pair else None)
      labels = np.zeros(len(encodings), np.int32)
      data = batching.Encoded([np.asarray(e.ids, np.int32) for e in encodings],
                              [np.asarray(e.type_ids, np.int32) for e in encodings], labels)
      # Length-sorted batches padded to their longest example; the engine pads each
      # to its own input grid.
      order = np.argsort(data.lengths, kind="stable")
      for first in range(0, len(order), self.batch_size):
        idx = order[first:first + self.batch_size]
        batch = batching.make_batch(data, idx, len(idx), int(data.lengths[idx].max()),
                                    tok.pad_token_id)
        index = batch["index"]
        out = self.engine(batch, return_kept_positions=show_kept)
        for r in range(len(idx)):
          enc = encodings[index[r]]
          results[rows[index[r]]] = self._record(first_line + rows[index[r]], enc, out, r,
                                                 show_kept)
    return results

  def _record(self, line: int, enc, out: dict, r: int, show_kept: bool) -> dict:
    logits = out["logits"][r]
    record = {"line": line}
    if self.info.num_labels == 1:
      record["score"] = float(logits[0])
    else:
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      record["label"] = int(np.argmax(logits))
      record["probabilities"] = [round(float(p), 6) for p in probs]
    record["tokens"] = len(enc.ids)
    record["truncated"] = bool(enc.overflowing)
    record["kept_per_layer"] = out["kept"][r].tolist()
    if show_kept:
      positions = [np.flatnonzero(layer[r]).tolist() for layer in out["kept_positions"]]
      record["input_tokens"] = list(enc.tokens)
      record["kept_positions"] = positions
      record["kept_tokens"] = [[enc.tokens[j] for j in layer] for layer in positions]
    return record
