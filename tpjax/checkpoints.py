"""Orbax checkpoints of a training stage: the latest (for resuming) and the best on dev.

Layout under a stage directory:
    latest/<step>/   the most recent state, saved periodically and on SIGINT/SIGTERM
    best/<step>/     the state with the best dev metric so far
    best/best.json   that checkpoint's step and dev metric
"""

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def _manager(directory: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.LatestN(1),
      enable_async_checkpointing=False,  # a save must be on disk before we move on
      create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def cast_like(reference: Any, restored: Any) -> Any:
  """`restored` (as read without a target) as arrays with `reference`'s dtypes."""
  return jax.tree.map(lambda ref, x: jnp.asarray(x, ref.dtype), reference, restored)


def _restore(manager: ocp.CheckpointManager, target: Any) -> Optional[Any]:
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(target))


class StageCheckpoints:
  """The latest and best checkpoints of one stage."""

  def __init__(self, directory: str):
    self.latest = _manager(os.path.join(directory, "latest"))
    self.best = _manager(os.path.join(directory, "best"))
    self._best_json = os.path.join(directory, "best", "best.json")

  def save_latest(self, step: int, state: Any) -> None:
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))
      self.latest.wait_until_finished()

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Restores the latest state into `target`'s structure; None if there is none."""
    return _restore(self.latest, target)

  def best_metric(self) -> Optional[float]:
    step = self.best.latest_step()
    if step is None or not os.path.exists(self._best_json):
      return None
    with open(self._best_json) as f:
      record = json.load(f)
    return record["dev_metric"] if record["step"] == step else None

  def save_best(self, step: int, state: Any, dev_metric: float) -> bool:
    """Saves `state` if `dev_metric` beats the stored best. Returns whether it did."""
    best = self.best_metric()
    if best is not None and dev_metric <= best:
      return False
    if self.best.latest_step() == step:
      return False
    self.best.save(step, args=ocp.args.StandardSave(state))
    self.best.wait_until_finished()
    with open(self._best_json, "w") as f:
      json.dump({"step": step, "dev_metric": float(dev_metric)}, f)
    return True

  def restore_best(self, target: Any = None) -> Optional[Any]:
    """The best state, into `target`'s structure or, without one, as nested dicts."""
    return _restore(self.best, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
