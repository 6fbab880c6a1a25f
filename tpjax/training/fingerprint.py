"""What shaped each stage of a run, so a rerun cannot silently reuse another config's models.

Every stage directory holds `fingerprint.json`: the config values that decide what the
stage trains (model, data, method, hyperparameters of this and earlier stages, global
batch) and the device count. A rerun in the same workdir compares its own values with
each recorded stage before any work and refuses on a difference, naming the keys. A
different device count alone is not a difference: the recorded global batch is kept
by changing the per-device batch size, or the run refuses if it does not divide.
"""

import json
import os
import shutil
from typing import Any

from absl import logging
import ml_collections

from tpjax.models import precision
from tpjax.training import parallel

FILE = "fingerprint.json"

# Fields that do not change what a stage computes (paths, logging, devices, and the
# eval batch size, which only groups examples); the global batch is recorded instead.
_IGNORED = ("data.glue_dir", "data.source", "data.per_device_batch_size",
            "data.per_device_eval_batch_size", "num_devices", "distributed",
            "coordinator_address", "num_processes", "process_id",
            "train.progress_bar", "train.log_every_steps",
            "train.checkpoint_every_steps", "stages", "stage_settings")


class RunMismatchError(ValueError):
  """The workdir holds stages made with another config."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def stage_fingerprint(config: ml_collections.ConfigDict, stage: str,
                      devices: int) -> dict[str, Any]:
  """{dotted key: value} of what shapes `stage` of `config` on `devices` devices."""
  flat = _flatten(json.loads(json.dumps(config.to_dict())))
  flat = {k: v for k, v in flat.items()
          if not any(k == p or k.startswith(p + ".") for p in _IGNORED)}
  stages = list(config.stages)
  earlier = stages[:stages.index(stage) + 1]
  flat["stages"] = earlier
  for name in earlier:
    settings = json.loads(json.dumps(config.stage_settings[name].to_dict()))
    flat.update({f"stage_settings.{name}.{k}": v for k, v in settings.items()})
  flat["global_batch"] = config.data.per_device_batch_size * devices
  # 'auto' is recorded as what it meant on this machine: a rerun elsewhere may differ.
  flat["model.compute_dtype"] = precision.resolve(config.model.compute_dtype)
  return dict(sorted(flat.items()))


def read(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write(stage_dir: str, config: ml_collections.ConfigDict, stage: str,
          devices: int) -> None:
  os.makedirs(stage_dir, exist_ok=True)
  record = {"devices": devices, "config": stage_fingerprint(config, stage, devices)}
  tmp = os.path.join(stage_dir, FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(stage_dir, FILE))


def _has_work(stage_dir: str) -> bool:
  """Whether a stage directory holds checkpoints (so a rerun would reuse them)."""
  return any(os.path.isdir(os.path.join(stage_dir, d)) and os.listdir(
      os.path.join(stage_dir, d)) for d in ("latest", "best"))


def _show(value: Any) -> str:
  return json.dumps(value)


def check_workdir(config: ml_collections.ConfigDict, workdir: str, devices: int,
                  overwrite: bool = False) -> None:
  """Refuses a rerun whose config differs from what the workdir's stages were made with.

  Also keeps the recorded global batch on another device count by setting
  `config.data.per_device_batch_size`. With `overwrite`, differing stages (and every
  later one) are deleted instead.

  Raises:
    RunMismatchError: a difference, without `overwrite`; or a device count that does
      not divide the recorded global batch.
  """
  for stage in config.stages:
    record = read(os.path.join(workdir, stage))
    if record is None:
      continue
    recorded = record["config"]["global_batch"]
    if record["devices"] != devices and config.data.per_device_batch_size * devices != recorded:
      if recorded % devices:
        raise RunMismatchError(
            f"Stage {stage} in {workdir} was trained with a global batch of {recorded} on "
            f"{record['devices']} device(s), which {devices} devices cannot split evenly. "
            f"Resume with a device count that divides {recorded} (config.num_devices), "
            "or use a new --workdir.")
      logging.warning("Resuming on %d devices instead of %d: per-device batch %d keeps "
                      "the global batch %d.", devices, record["devices"],
                      recorded // devices, recorded)
      print(f"Note: {devices} devices instead of {record['devices']}; per-device batch "
            f"{recorded // devices} keeps the run's global batch of {recorded}.", flush=True)
      config.data.per_device_batch_size = recorded // devices
    break

  differing = []
  for stage in config.stages:
    stage_dir = os.path.join(workdir, stage)
    record = read(stage_dir)
    if record is None:
      if _has_work(stage_dir):
        logging.warning("Stage %s in %s has checkpoints but no %s (made before runs "
                        "recorded their config); assuming it matches.", stage, workdir, FILE)
      continue
    ours = stage_fingerprint(config, stage, devices)
    keys = sorted(k for k in set(ours) | set(record["config"])
                  if ours.get(k) != record["config"].get(k))
    if keys:
      differing.append((stage, keys, record["config"], ours))
  if not differing:
    return
  if overwrite:
    first = list(config.stages).index(differing[0][0])
    for stage in config.stages[first:]:
      stage_dir = os.path.join(workdir, stage)
      if os.path.isdir(stage_dir) and parallel.is_main_process():
        logging.warning("--overwrite: deleting %s.", stage_dir)
        shutil.rmtree(stage_dir)
    parallel.sync("overwrite")
    return
  stage, keys, theirs, ours = differing[0]
  shown = ", ".join(f"{k}: {_show(theirs.get(k, '(absent)'))} there, "
                    f"{_show(ours.get(k, '(absent)'))} now" for k in keys[:6])
  more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
  stages = ", ".join(s for s, *_ in differing)
  raise RunMismatchError(
      f"Workdir {workdir} holds stage(s) {stages} trained with another config ({shown}"
      f"{more}), so rerunning there would reuse those models under this config's name. "
      f"Use a new --workdir (with --config.init_from={workdir} to start from its "
      f"fine-tuned model), or pass --overwrite to delete stage(s) {stages} and train "
      "them again.")
