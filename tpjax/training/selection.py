"""Choosing on the held-out selection slice, never on dev: the rules, no arrays.

Training holds a seeded slice of the training set out (`config.data.selection_fraction`,
`batching.hold_out`); checkpoints, keep ratios, lambda and t are chosen on it, and dev
is evaluated once, at what was chosen. This module has what every chooser shares:
  selection_score   what 'best' maximises under a FLOPs bound (checkpoints, settings);
  choose            the best candidate at each FLOPs level, judged on the slice only;
  slice_settings    the config fields that fix a run's slice, to compare two runs;
  slice_record      what a summary or result file records about the slice.
"""

from typing import Optional, Sequence

from tpjax.data import glue

# The eval_data key, metrics.jsonl split and result-file name of the held-out slice.
SPLIT = "selection"
# What a result file records as `selected_on` when its choices were made on dev.
DEV = "dev"


def selection_score(metric: float, relative_flops: float, budget: Optional[float]) -> float:
  """What 'best' maximises: the metric inside the FLOPs budget; outside it, below
  every candidate inside it, and the fewer FLOPs the better."""
  if budget is None or relative_flops <= budget:
    return metric
  return -1e6 - relative_flops


def choose(candidates: Sequence[dict], metric: str,
           levels: Sequence[Optional[float]]) -> list:
  """The best candidate at each FLOPs level, judged by its metrics on the slice.

  Args:
    candidates: Dicts whose `SPLIT` entry holds that candidate's metrics on the
      selection slice ({metric: ..., 'relative_flops': ...}). Nothing else of a
      candidate is read, so a dev number beside it cannot sway the choice.
    metric: The task's selection metric, e.g. 'accuracy' (`glue.TASKS[t].metric`).
    levels: Most relative FLOPs (on the slice) a choice may have; None: no bound.

  Returns:
    (level, index into candidates) for each level some candidate fits, in the order
    of `levels`: the highest metric within the level; ties go to fewer FLOPs, then
    to the earlier candidate.
  """
  picks = []
  for level in levels:
    fits = [i for i, c in enumerate(candidates)
            if level is None or c[SPLIT]["relative_flops"] <= level]
    if fits:
      best = max(fits, key=lambda i: (candidates[i][SPLIT][metric],
                                      -candidates[i][SPLIT]["relative_flops"], -i))
      picks.append((level, best))
  return picks


def slice_settings(config) -> dict:
  """The config values that fix a run's selection slice (`batching.load_train`).

  Two runs hold out the same examples exactly when these agree (the slice is drawn
  from the first `max_train_examples` training examples with its own seed). A config
  written before the slice existed has no such fields: its fraction reads as 0.

  Args:
    config: A run config (ConfigDict), or its dict form (config.json).
  """
  data = config["data"]
  get = lambda key, default: data[key] if key in data else default
  return {"task": config["task"], "max_train_examples": get("max_train_examples", None),
          "fraction": get("selection_fraction", 0.0),
          "max_examples": get("selection_max_examples", 0),
          "seed": get("selection_seed", 0)}


def slice_record(config, examples: int, train_examples: int) -> dict:
  """The slice as summaries and result files record it.

  Args:
    config: The run config.
    examples: Size of the held-out slice (0: none; choices were made on dev).
    train_examples: What was left to train on.

  Returns:
    {'split', 'fraction', 'max_examples', 'seed', 'examples', 'train_examples'}; split
    is `SPLIT`, or the task's first dev split when nothing was held out.
  """
  settings = slice_settings(config)
  return {"split": SPLIT if examples else glue.TASKS[config["task"]].eval_splits[0],
          "fraction": settings["fraction"], "max_examples": settings["max_examples"],
          "seed": settings["seed"], "examples": examples,
          "train_examples": train_examples}



def check_init_from(config, source_config: dict, source: str) -> None:
  """Refuses to choose on a slice that the run started from trained on.

  A run that starts from another run of the same task (`config.init_from`) and
  selects on a held-out slice must hold out the same examples that run held out;
  otherwise its checkpoints (and a sweep's settings) would be judged on examples its
  starting weights were fitted to. Runs that select on dev, or start from another
  task, are not checked.

  Args:
    config: The new run's config.
    source_config: The config the starting run recorded (its config.json).
    source: The starting run's workdir, for the message.

  Raises:
    ValueError: If the two slices differ.
  """
  mine, theirs = slice_settings(config), slice_settings(source_config)
  if not mine["fraction"] or mine["task"] != theirs["task"] or mine == theirs:
    return
  fields = {"fraction": "selection_fraction", "max_examples": "selection_max_examples",
            "seed": "selection_seed", "max_train_examples": "max_train_examples"}
  differ = ", ".join(f"data.{fields[k]} {theirs[k]!r} there, {mine[k]!r} here"
                     for k in fields if mine[k] != theirs[k])
  raise ValueError(
      f"init_from={source!r} held out another selection slice ({differ}), so this "
      "run would choose on examples its starting weights were trained on. Start from "
      "a run made with the same data.selection_* and data.max_train_examples values, "
      "or pass --config.data.selection_fraction=0 to choose on dev.")
