"""Reopens a training run's workdir: config, model, best parameters, pruning method."""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from tpjax.training import checkpoints
from tpjax.data import glue
from tpjax.data import tokenization
from tpjax.models import classifier
from tpjax.models import encoder as encoder_lib
from tpjax.pruning import base
from tpjax.pruning import registry


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  model: encoder_lib.EncoderModel
  params: dict            # {'model': ..., 'pruning': ...}
  tokenizer: tokenization.Tokenizer
  method: base.Method
  stage: str              # the stage whose best checkpoint was loaded
  prune_stage: str        # how to prune at inference: 'finetune' (off) or 'hard'


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, from config.json (written at start) or summary.json."""
  for name in ("config.json", "summary.json"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        data = json.load(f)
      return ml_collections.ConfigDict(data["config"] if name == "summary.json" else data)
  raise FileNotFoundError(f"{workdir!r} is not a tpjax run: no config.json in it.")


def load_run(workdir: str, stage: Optional[str] = None,
             pruning_overrides: Optional[dict[str, Any]] = None) -> TrainedRun:
  """Loads the best checkpoint of `stage` (default: the last stage that has one).

  Args:
    workdir: a directory written by `tpjax.main`.
    stage: which stage's best checkpoint to load.
    pruning_overrides: replace `config.pruning` fields (e.g. evaluate a fine-tuned
      model with the top-k baseline); the method's parameters start fresh if it has
      none in the checkpoint.
  """
  config = read_config(workdir)
  if pruning_overrides:
    config.pruning.update(pruning_overrides)
  stages = [stage] if stage else list(reversed(config.stages))
  for name in stages:
    # read_only: prediction never writes inside a run.
    ckpts = checkpoints.StageCheckpoints(os.path.join(workdir, name), read_only=True)
    raw = ckpts.restore_best()
    ckpts.close()
    if raw is not None:
      break
  else:
    raise FileNotFoundError(f"No best checkpoint under {workdir!r} for stages {stages}.")
  info = glue.TASKS[config.task]
  model, model_params, tokenizer = classifier.build(config, info.num_labels,
                                                    jax.random.PRNGKey(0))
  method = registry.get_method(config.pruning, model.config)
  pruning = method.init_params(jax.random.PRNGKey(1))
  if not pruning_overrides and raw["params"].get("pruning"):
    pruning = raw["params"]["pruning"]
  params = {"model": checkpoints.cast_like(model_params, raw["params"]["model"]),
            "pruning": jax.tree.map(jnp.asarray, pruning)}
  prune_stage = "finetune" if method.name == "none" else "hard"
  return TrainedRun(config, model, params, tokenizer, method, name, prune_stage)
