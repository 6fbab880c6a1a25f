"""Orbax checkpoints of a training stage: the latest (for resuming) and the best on dev.

Layout under a stage directory:
    latest/<step>/          the most recent state, saved periodically and on SIGINT/SIGTERM
    latest/checksums.json   SHA-256 of every file of that step, written after the save
    best/<step>/            the state with the best dev metric so far
    best/checksums.json     the same for best/
    best/best.json          that checkpoint's step and dev metric

Every restore checks the checksums first, so a flipped byte or a truncated file is
never trained on or predicted with: a bad `latest/` step is moved aside to
`latest.corrupt-<step>/` and resuming falls back to `best/` (a full train state, so
the run still ends exactly as an uninterrupted one); with no good state left the
restore stops with `CheckpointError`.
"""

import hashlib
import json
import os
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tpjax.training import errors
from tpjax.training import parallel

CHECKSUMS = "checksums.json"


class CheckpointError(errors.RunFailed):
  """No checkpoint of a stage can be trusted; the message says which and what to do."""


def _manager(directory: str, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.LatestN(1),
      enable_async_checkpointing=False,  # a save must be on disk before we move on
      create=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def cast_like(reference: Any, restored: Any) -> Any:
  """`restored` (as read without a target) as arrays with `reference`'s dtypes."""
  return jax.tree.map(lambda ref, x: jnp.asarray(x, ref.dtype), reference, restored)


def _digest(step_dir: str) -> dict[str, str]:
  """{path relative to `step_dir`: sha256} of every file under it."""
  digests = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      sha = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          sha.update(block)
      digests[os.path.relpath(path, step_dir)] = sha.hexdigest()
  return dict(sorted(digests.items()))


def write_checksums(directory: str, step: int) -> None:
  """Records the checksums of `directory/<step>` (the only step kept there)."""
  if not parallel.is_main_process():  # one writer on a shared file system
    return
  record = {"step": step, "files": _digest(os.path.join(directory, str(step)))}
  tmp = os.path.join(directory, CHECKSUMS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(directory, CHECKSUMS))


def verify(directory: str, step: int) -> Optional[str]:
  """What is wrong with `directory/<step>`, or None if its files match the checksums.

  A step without a record (a run from before checksums, or a kill between the save
  and the record) is not rejected here; `_restore` still catches it if unreadable.
  """
  path = os.path.join(directory, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return f"{path} is unreadable"
  if record.get("step") != step:
    return None
  actual = _digest(os.path.join(directory, str(step)))
  expected = record["files"]
  missing = sorted(set(expected) - set(actual))
  changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
  if missing or changed:
    return (f"{len(changed)} file(s) differ from their checksum ({', '.join(changed[:3])})"
            f" and {len(missing)} are missing")
  return None


def _saved_tree(directory: str, step: int) -> Any:
  """The saved arrays' shapes and dtypes, placed on this process's first device.

  Restoring needs a target once the checkpoint comes from another topology (a
  multi-host run read on one host): orbax refuses to guess the devices.
  """
  reader = ocp.CheckpointManager(os.path.abspath(directory),
                                 item_handlers=ocp.StandardCheckpointHandler(),
                                 options=ocp.CheckpointManagerOptions(create=False))
  metadata = reader.item_metadata(step)
  reader.close()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = getattr(metadata, "tree", metadata)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      tree)


def _restore(manager: ocp.CheckpointManager, directory: str,
             target: Any) -> tuple[Optional[Any], Optional[int], Optional[str]]:
  """(state, step, None), (None, None, None) without a step, or (None, step, problem)."""
  step = manager.latest_step()
  if step is None:
    return None, None, None
  problem = verify(directory, step)
  if problem is None:
    try:
      if target is None:
        target = _saved_tree(directory, step)
      return manager.restore(step, args=ocp.args.StandardRestore(target)), step, None
    except Exception as err:  # pylint: disable=broad-except
      # Orbax's errors for a damaged file run to hundreds of lines; one is enough.
      text = str(err).strip().splitlines()
      problem = f"it cannot be read ({type(err).__name__}: {text[0] if text else ''})"
  return None, step, problem


class StageCheckpoints:
  """The latest and best checkpoints of one stage.

  With `read_only=True` (prediction, evaluation) nothing is created or changed on
  disk, and a missing `best/` reads as no checkpoint.
  """

  def __init__(self, directory: str, read_only: bool = False):
    self.directory = directory
    self.read_only = read_only
    self._latest_dir = os.path.join(directory, "latest")
    self._best_dir = os.path.join(directory, "best")
    self._best_json = os.path.join(self._best_dir, "best.json")
    self.latest = None if read_only else _manager(self._latest_dir)
    self.best = None
    self._best_metric = None
    if not read_only:
      self.best = _manager(self._best_dir)
    elif os.path.isdir(self._best_dir):
      self.best = _manager(self._best_dir, create=False)

  def save_latest(self, step: int, state: Any) -> None:
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))
      self.latest.wait_until_finished()
      write_checksums(self._latest_dir, step)

  def restore_latest(self, target: Any) -> Optional[Any]:
    """The state to resume from, into `target`'s structure; None if there is none.

    A corrupt latest step is moved aside and the best checkpoint (a full train state
    as well) is used instead.

    Raises:
      CheckpointError: the latest step is corrupt and there is no good best one.
    """
    state, step, problem = _restore(self.latest, self._latest_dir, target)
    if problem is None:
      return state
    aside = f"{self._latest_dir}.corrupt-{step}"
    if parallel.is_main_process():
      os.replace(os.path.join(self._latest_dir, str(step)), aside)
    parallel.sync(f"set aside {aside}")
    self.latest.close()
    self.latest = _manager(self._latest_dir)
    best, best_step, best_problem = _restore(self.best, self._best_dir, target)
    if best is None:
      why = (f"best/ step {best_step} is damaged too: {best_problem}" if best_problem
             else "there is no best/ checkpoint to fall back to")
      raise CheckpointError(
          f"Checkpoint {self._latest_dir}/{step} is damaged ({problem}; moved to {aside}) "
          f"and {why}. Delete {self.directory} to train this stage again from its start.")
    logging.warning("Checkpoint %s/%d is damaged (%s); moved to %s. Resuming from the "
                    "best checkpoint, step %d.", self._latest_dir, step, problem, aside,
                    best_step)
    print(f"Warning: checkpoint {self._latest_dir}/{step} is damaged ({problem}); "
          f"resuming from best/ step {best_step}.", flush=True)
    return best

  def best_metric(self) -> Optional[float]:
    """The dev metric of the best checkpoint; read from disk once, then kept, so every
    process of a multi-host job decides alike without waiting for process 0's write."""
    if self._best_metric is not None:
      return self._best_metric
    step = self.best.latest_step() if self.best else None
    if step is None or not os.path.exists(self._best_json):
      return None
    with open(self._best_json) as f:
      record = json.load(f)
    self._best_metric = record["dev_metric"] if record["step"] == step else None
    return self._best_metric

  def save_best(self, step: int, state: Any, dev_metric: float) -> bool:
    """Saves `state` if `dev_metric` beats the stored best. Returns whether it did."""
    best = self.best_metric()
    if best is not None and dev_metric <= best:
      return False
    if self.best.latest_step() != step:
      self.best.save(step, args=ocp.args.StandardSave(state))
      self.best.wait_until_finished()
    elif best is not None:
      return False
    # (else: a kill came between this step's save and its records; complete them)
    write_checksums(self._best_dir, step)
    self._best_metric = float(dev_metric)
    if parallel.is_main_process():
      with open(self._best_json, "w") as f:
        json.dump({"step": step, "dev_metric": float(dev_metric)}, f)
    return True

  def restore_best(self, target: Any = None) -> Optional[Any]:
    """The best state, into `target`'s structure or, without one, as nested dicts.

    Raises:
      CheckpointError: the best checkpoint is damaged.
    """
    if self.best is None:
      return None
    state, step, problem = _restore(self.best, self._best_dir, target)
    if problem:
      raise CheckpointError(f"Checkpoint {self._best_dir}/{step} is damaged ({problem}); "
                            "it is not used. Retrain the stage (delete "
                            f"{self.directory}) or use another run.")
    return state

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.close()
