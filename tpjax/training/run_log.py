"""What a user sees of a run: metrics.jsonl, TensorBoard events, summary.json."""

import json
import os
from typing import Any, Mapping

from absl import logging
import numpy as np
import tensorboardX


def _plain(value: Any) -> Any:
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def write_json(path: str, data: Mapping[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_plain(data), f, indent=2)
  os.replace(tmp, path)


def drop_rows_after(directory: str, step: int) -> None:
  """Keeps only the rows of `directory/metrics.jsonl` up to `step`.

  A resumed stage redoes every step after its checkpoint, so the rows a killed run
  wrote after it would otherwise appear twice; a last line cut short by the kill is
  dropped as well.
  """
  path = os.path.join(directory, "metrics.jsonl")
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if row.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


class Reporter:
  """Appends metrics to `metrics.jsonl` and TensorBoard under `directory`."""

  def __init__(self, directory: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(directory, exist_ok=True)
      self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
      self._tb = tensorboardX.SummaryWriter(os.path.join(directory, "tensorboard"))

  def write(self, step: int, prefix: str, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = _plain(values)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      if isinstance(value, (int, float)):
        self._tb.add_scalar(f"{prefix}/{key}", value, step)
      elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        for i, v in enumerate(value):
          self._tb.add_scalar(f"{prefix}/{key}/{i}", v, step)
    self._tb.flush()
    logging.info("%s step %d: %s", prefix, step, values)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
