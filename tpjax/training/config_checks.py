"""Checks a run config before any work, so a bad value is one sentence, not a NaN model.

Every problem names the field, the value given and what is allowed; all problems of a
config are reported together. `validate` needs no devices (it runs before
`jax.distributed.initialize`); `validate_devices` runs once the devices are known.
"""

import dataclasses
import math
import os
from typing import Any

import ml_collections

from tpjax.data import glue
from tpjax.models import config as config_lib
from tpjax.models import precision
from tpjax.models import pretrained
from tpjax.pruning import base as pruning_base
from tpjax.pruning import registry
from tpjax.pruning import top


class ConfigError(ValueError):
  """A config value that cannot work; the message lists every such value."""


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def model_positions(config: ml_collections.ConfigDict) -> int:
  """How many token positions the configured model has (RoBERTa reserves pad + 1)."""
  directory = pretrained.resolve(config.model.name)
  model_config = config_lib.EncoderConfig.from_json(os.path.join(directory, "config.json"))
  if config.model.random_init:
    model_config = dataclasses.replace(model_config, **config.model.overrides.to_dict())
  if model_config.model_type == "roberta":
    return model_config.max_position_embeddings - model_config.pad_token_id - 1
  return model_config.max_position_embeddings


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """One sentence per bad value of `config` (empty when it can run)."""
  found = []

  def need(ok: bool, field: str, allowed: str) -> None:
    if not ok:
      value = config
      for part in field.split("."):
        value = value[part]
      found.append(f"config.{field}={value!r} is not allowed ({allowed})")

  def positive_int(field, value):
    need(is_int(value) and value >= 1, field, "an integer of at least 1")

  need(config.task in glue.TASKS, "task", f"one of {', '.join(glue.TASKS)}")
  need(is_int(config.seed), "seed", "an integer")
  stages = tuple(config.stages)
  need(bool(stages) and all(s in pruning_base.STAGES for s in stages)
       and len(set(stages)) == len(stages), "stages",
       f"a non-empty sequence of distinct names from {pruning_base.STAGES}")
  need(is_int(config.num_devices) and config.num_devices >= 0, "num_devices",
       "0 for all devices, or a positive count")
  if config.coordinator_address:
    need(config.distributed, "distributed", "True with a coordinator_address")
    need(is_int(config.num_processes) and config.num_processes >= 1, "num_processes",
         "the number of processes, at least 1, with a coordinator_address")
    need(is_int(config.process_id) and 0 <= config.process_id < max(
        config.num_processes if is_int(config.num_processes) else 1, 1), "process_id",
         "this process's index, from 0 to num_processes - 1")
  need(config.pruning.method in registry.METHODS, "pruning.method",
       f"one of {', '.join(registry.METHODS)}")
  need(config.data.source in ("auto", "tsv", "tfds"), "data.source", "auto, tsv or tfds")
  need(config.model.compute_dtype in ("auto",) + precision.COMPUTE_DTYPES,
       "model.compute_dtype", "auto, " + " or ".join(precision.COMPUTE_DTYPES))
  need(not config.init_from or os.path.isdir(config.init_from), "init_from",
       "'' or the workdir of a finished run")

  data = config.data
  positive_int("data.per_device_batch_size", data.per_device_batch_size)
  positive_int("data.per_device_eval_batch_size", data.per_device_eval_batch_size)
  for field in ("max_train_examples", "max_eval_examples"):
    value = data[field]
    need(value is None or (is_int(value) and value >= 1), f"data.{field}",
         "None for all, or an integer of at least 1")
  need(is_number(data.selection_fraction) and 0 <= data.selection_fraction < 1,
       "data.selection_fraction", "a number from 0 (select on dev) up to, not including, 1")
  need(is_int(data.selection_max_examples) and data.selection_max_examples >= 0,
       "data.selection_max_examples", "0 for no cap, or a positive count")
  need(is_int(data.selection_seed), "data.selection_seed", "an integer")
  need(all(is_int(b) and b >= 1 for b in data.buckets), "data.buckets",
       "positive token lengths")
  if is_int(data.max_length) and data.max_length >= 2:
    try:
      positions = model_positions(config)
    except (OSError, ValueError) as err:
      found.append(f"config.model.name={config.model.name!r} cannot be read ({err})")
    else:
      need(data.max_length <= positions, "data.max_length",
           f"2 to {positions}, the positions of model {config.model.name}")
  else:
    need(False, "data.max_length", "an integer of at least 2")

  if config.pruning.method == "top":
    first = config.pruning.get("top_first_layer")
    need(is_int(first) and first >= 1, "pruning.top_first_layer",
         "an integer of at least 1: layer 0 never prunes, as in the ToP reference, whose "
         "prune locations start at 2 using layer 1's scores")
    try:
      top.resolve(config.pruning)
    except ValueError as err:
      found.append(f"config.{err}".rstrip("."))

  train = config.train
  need(is_number(train.warmup_ratio) and 0 <= train.warmup_ratio <= 1,
       "train.warmup_ratio", "a number from 0 to 1")
  need(is_number(train.weight_decay) and train.weight_decay >= 0, "train.weight_decay",
       "a number of at least 0")
  need(is_number(train.grad_clip) and train.grad_clip > 0, "train.grad_clip",
       "a number above 0")
  need(train.clip_mode in ("per_group", "joint"), "train.clip_mode", "per_group or joint")
  need(is_number(train.flops_slack) and train.flops_slack >= 0, "train.flops_slack",
       "a number of at least 0")
  need(is_int(train.max_steps) and train.max_steps >= 0, "train.max_steps",
       "0 for no cap, or a positive count")
  need(is_int(train.eval_every_steps) and train.eval_every_steps >= 0,
       "train.eval_every_steps", "0 for once per epoch, or a positive count")
  positive_int("train.log_every_steps", train.log_every_steps)
  positive_int("train.checkpoint_every_steps", train.checkpoint_every_steps)

  for stage in stages:
    if stage not in config.stage_settings:
      continue
    settings = config.stage_settings[stage]
    prefix = f"stage_settings.{stage}."
    need(is_number(settings.num_epochs) and settings.num_epochs > 0,
         prefix + "num_epochs", "a number above 0")
    for field in ("learning_rate", "pruning_learning_rate"):
      need(is_number(settings[field]) and settings[field] >= 0, prefix + field,
           "a number of at least 0")
    need(settings.handover in ("best", "last"), prefix + "handover", "best or last")
    budget = settings.flops_budget
    ok = budget in ("", "start")
    if not ok:
      try:
        ok = 0 < float(budget) and math.isfinite(float(budget))
      except (TypeError, ValueError):
        ok = False
    need(ok, prefix + "flops_budget", "'', 'start' or a number above 0")
    every = settings.eval_every_steps
    need(every is None or (is_int(every) and every > 0), prefix + "eval_every_steps",
         "None (train.eval_every_steps) or a positive count")
    for field in ("warmup_ratio", "weight_decay"):
      value = settings[field]
      need(value is None or (is_number(value) and value >= 0), prefix + field,
           "None or a number of at least 0")
    need(settings.clip_mode in (None, "per_group", "joint"), prefix + "clip_mode",
         "None, per_group or joint")
  return found


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every bad value of `config`."""
  found = problems(config)
  if found:
    raise ConfigError("; ".join(found) + ".")


def validate_devices(config: ml_collections.ConfigDict, available: int,
                     processes: int = 1) -> None:
  """Raises ConfigError if `config.num_devices` asks for more devices than exist, or
  for fewer than all of a multi-process job's (each process must own mesh devices)."""
  if config.num_devices > available:
    raise ConfigError(f"config.num_devices={config.num_devices} is not allowed (0 for "
                      f"all, or at most the {available} device(s) present).")
  if processes > 1 and config.num_devices not in (0, available):
    raise ConfigError(f"config.num_devices={config.num_devices} is not allowed (0 or "
                      f"{available}: a job of {processes} processes uses every device).")
