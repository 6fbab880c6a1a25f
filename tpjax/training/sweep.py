"""Inference settings of a trained run, chosen on its held-out slice; dev at the choice.

Three sweeps evaluate a trained run under settings that need no training:
  training_free  top-k keep rates (and unpruned first layers) or manual thresholds on
                 a fine-tuned run (`benchmarks/prune_sweep.py`);
  sdtp_ratios    one trained SDTP run at other keep ratios r (`benchmarks/sdtp_sweep.py`);
  top_rules      a ToP run's checkpoints under both inference rules
                 (`benchmarks/top_rules.py`).
Each evaluates every setting on the run's selection slice (`batching.load_train` with
the run's own config: the examples its training held out), chooses on the slice alone
(`choose_and_report`: the best setting within each FLOPs level), and only then
evaluates dev, once per chosen setting. The result records `selected_on: 'selection'`,
the slice (`selection.slice_record`: fraction, seed, size), every setting's slice
metrics (`grid`) and the chosen settings' dev metrics (`rows`, or `points` for SDTP;
each row's own `selection` entry holds its slice metrics, `flops_levels` the levels
it was chosen for). It lives beside the training loop because it evaluates as
training does (`train.evaluate`), which inference modules never import.
"""

import functools
import json
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import loading
from tpjax.pruning import flops
from tpjax.pruning import registry
from tpjax.pruning import sdtp
from tpjax.pruning import top
from tpjax.training import checkpoints
from tpjax.training import parallel
from tpjax.training import selection
from tpjax.training import train

# FLOPs levels a curve asks of every method (issue's 0.35-0.75 relative FLOPs span).
DEFAULT_LEVELS = (0.35, 0.45, 0.55, 0.65, 0.75)


class Evaluator:
  """Evaluates one trained run on its selection slice and its dev splits.

  Attributes:
    run: The loaded run.
    data: {split: examples}: `selection.SPLIT` (the slice the run's training held
      out, reproduced from its config) and the task's dev splits.
    dev_splits: The task's dev splits, the first one reported at top level.
    record: `selection.slice_record` of the slice.
    calls: (split, what) of every evaluation so far, in order.
  """

  def __init__(self, run: loading.TrainedRun, workdir: str):
    """Loads the run's slice and dev splits.

    Raises:
      ValueError: If the run held no slice out (it chose on dev), so any choice
        over it could only be made on dev.
    """
    config = run.config
    config.data.buckets = batching.normalize_buckets(config.data.buckets,
                                                     config.data.max_length)
    train_data, held = batching.load_train(config, run.tokenizer)
    if held is None:
      raise ValueError(
          f"{workdir!r} held no selection slice out of its training set "
          "(data.selection_fraction is 0, or the run predates the slice), so it chose "
          "its checkpoints on dev and a sweep over it could only choose on dev. "
          "Train it again with data.selection_fraction > 0 (the default).")
    info = glue.TASKS[config.task]
    self.run = run
    self.dev_splits = tuple(info.eval_splits)
    self.data = {selection.SPLIT: held}
    self.data.update({s: batching.load_split(config, run.tokenizer, s,
                                             config.data.max_eval_examples)
                      for s in self.dev_splits})
    self.record = selection.slice_record(config, len(held), len(train_data))
    self.metric = info.metric
    self.mesh = parallel.make_mesh(1)
    self.calls = []

  def compile(self, method, stage: str = "hard") -> Callable:
    """The compiled eval step of the run's model under `method`."""
    return parallel.data_parallel_eval_step(
        functools.partial(train.eval_step, model=self.run.model, method=method,
                          stage=stage), self.mesh)

  def __call__(self, p_eval: Callable, params: dict, split: str, what: str = "") -> dict:
    """GLUE metrics and FLOPs of `params` on `split` (`train.evaluate`)."""
    self.calls.append((split, what))
    run = self.run
    return train.evaluate(p_eval, params, self.data[split], run.config.task, run.config,
                          self.mesh, run.tokenizer.pad_token_id, run.model.config,
                          where=f"{what}, {split}")


def choose_and_report(grid: Sequence[dict], evaluate: Callable[[int, str], dict],
                      metric: str, levels: Sequence[Optional[float]],
                      dev_splits: Sequence[str]) -> tuple[list, list]:
  """Every setting on the slice; the best per FLOPs level; dev for those only.

  Args:
    grid: The settings, JSON-able dicts.
    evaluate: (index into grid, split) -> that setting's metrics on the split.
    metric: The task's selection metric.
    levels: FLOPs levels (`selection.choose`); None: no bound.
    dev_splits: Dev splits to report the chosen settings on, the first at top level.

  Returns:
    (grid: each setting with its slice metrics under `selection.SPLIT`; rows: each
    chosen setting once, in grid order, with its slice metrics, the levels it was
    chosen for under 'flops_levels', the first dev split's metrics at top level and,
    with several dev splits, all of them under 'dev').
  """
  candidates = [{**setting, selection.SPLIT: evaluate(i, selection.SPLIT)}
                for i, setting in enumerate(grid)]
  chosen = {}
  for level, i in selection.choose(candidates, metric, levels):
    chosen.setdefault(i, []).append(level)
  rows = []
  for i in sorted(chosen):
    dev = {split: evaluate(i, split) for split in dev_splits}
    row = {**candidates[i], "flops_levels": chosen[i], **dev[dev_splits[0]]}
    if len(dev_splits) > 1:
      row["dev"] = dev
    rows.append(row)
  return candidates, rows


def _header(evaluator: Evaluator, workdir: str, levels) -> dict:
  return {"workdir": workdir, "task": evaluator.run.config.task,
          "metric": evaluator.metric, "selected_on": selection.SPLIT,
          "selection": evaluator.record, "flops_levels": list(levels)}


def _with_pruning(run: loading.TrainedRun, setting: dict):
  """(method, pruning config) of the run with `setting`'s config.pruning fields."""
  pruning = run.config.pruning.copy_and_resolve_references()
  pruning.update({k: v for k, v in setting.items() if k in pruning})
  return registry.get_method(pruning, run.model.config), pruning


def training_free(workdir: str, method: str, values: Sequence[float],
                  full_layers: Sequence[int] = (0,),
                  levels: Sequence[Optional[float]] = DEFAULT_LEVELS) -> dict:
  """Top-k or manual thresholds on a fine-tuned run, without training.

  Args:
    workdir: A run with a finetune stage (its best checkpoint is pruned).
    method: 'topk' (values are keep_rate) or 'threshold' (final_threshold).
    values: The grid of keep rates or thresholds.
    full_layers: topk: unpruned first layers to try (0: the reference rule); the grid
      is every value with every count.
    levels: FLOPs levels to choose a setting for, on the slice.

  Returns:
    The result file: header, `grid` (every setting on the slice), `rows` (the
    unpruned model, then each chosen setting with its dev metrics).
  """
  run = loading.load_run(workdir, stage="finetune", pruning_overrides={"method": "none"})
  evaluator = Evaluator(run, workdir)
  key = "keep_rate" if method == "topk" else "final_threshold"
  if method == "topk":
    grid = [{"method": method, key: float(v), "topk_full_layers": int(f)}
            for f in full_layers for v in values]
  else:
    grid = [{"method": method, key: float(v)} for v in values]
  compiled = {}

  def evaluate(i, split):
    if i not in compiled:
      pruner, _ = _with_pruning(run, grid[i])
      params = {"model": run.params["model"],
                "pruning": pruner.init_params(jax.random.PRNGKey(1))}
      compiled[i] = (evaluator.compile(pruner), params)
    p_eval, params = compiled[i]
    return evaluator(p_eval, params, split, f"{method} {grid[i]}")

  candidates, rows = choose_and_report(grid, evaluate, evaluator.metric, levels,
                                       evaluator.dev_splits)
  p_none = evaluator.compile(run.method, stage="finetune")
  unpruned = {"method": "none", selection.SPLIT: evaluator(p_none, run.params,
                                                           selection.SPLIT, "unpruned"),
              **evaluator(p_none, run.params, evaluator.dev_splits[0], "unpruned")}
  return {**_header(evaluator, workdir, levels), "method": method, "grid": candidates,
          "rows": [unpruned] + rows}


def predictor_overhead(result: dict, lengths: np.ndarray, layers: tuple,
                       model_config) -> float:
  """SDTP prediction-module MACs over the unpruned model's, on real lengths.

  A module at layer l scores every token entering layer l.

  Args:
    result: `train.evaluate`'s metrics (its tokens_kept_per_layer).
    lengths: <int>[examples] real lengths of the evaluated split.
    layers: The modules' layers.
    model_config: The encoder's config.
  """
  kept = [1.0] + list(result["tokens_kept_per_layer"])  # entering layer l: kept[l]
  scored = sum(kept[l] for l in layers) * lengths.sum()
  full = flops.example_macs(lengths, np.repeat(lengths[:, None],
                                               model_config.num_hidden_layers, 1),
                            model_config).sum()
  return float(scored * sdtp.predictor_flops(model_config.hidden_size) / full)


def sdtp_ratios(workdir: str, ratios: Sequence[float],
                levels: Sequence[Optional[float]] = DEFAULT_LEVELS,
                run: Optional[loading.TrainedRun] = None) -> dict:
  """One trained SDTP run's modules at other keep ratios r, chosen on the slice.

  Args:
    workdir: A run with an SDTP soft stage.
    ratios: Values of r (`sdtp_keep_ratio`).
    levels: FLOPs levels (relative FLOPs without the modules' own MACs, as every
      curve plots them) to choose an r for, on the slice.
    run: The loaded run; default its soft stage's best checkpoint.

  Returns:
    The result file: header, `grid` (every r on the slice), `points` (each chosen r
    with its dev metrics, `relative_flops_with_predictors` and `tokens_pruned`).
  """
  run = run or loading.load_run(workdir, stage="soft")
  evaluator = Evaluator(run, workdir)
  grid = [{"method": "sdtp", "sdtp_keep_ratio": float(r), "sdtp_keep_ratios": ()}
          for r in ratios]
  compiled = {}

  def evaluate(i, split):
    if i not in compiled:
      method = _with_pruning(run, grid[i])[0]
      compiled[i] = (method, evaluator.compile(method))
    method, p_eval = compiled[i]
    start = time.time()
    result = evaluator(p_eval, run.params, split, f"sdtp {grid[i]}")
    lengths = evaluator.data[split].lengths[:_evaluated(evaluator.data[split], run.config)]
    extra = predictor_overhead(result, lengths, method.layers, run.model.config)
    padded = [k for k in result if k.startswith("relative_flops_padded")]
    return {"keep_ratios": list(method.ratios), "accuracy": result["accuracy"],
            evaluator.metric: result[evaluator.metric],
            "relative_flops": result["relative_flops"],
            "relative_flops_with_predictors": result["relative_flops"] + extra,
            "tokens_kept_per_layer": result["tokens_kept_per_layer"],
            "tokens_pruned": 1.0 - float(np.mean(result["tokens_kept_per_layer"])),
            "eval_seconds": time.time() - start, **{k: result[k] for k in padded}}

  candidates, points = choose_and_report(grid, evaluate, evaluator.metric, levels,
                                         evaluator.dev_splits)
  for entry in candidates + points:
    entry.pop("sdtp_keep_ratios")
  return {**_header(evaluator, workdir, levels), "method": "sdtp",
          "split": evaluator.dev_splits[0], "grid": candidates, "points": points}


def top_states(workdir: str, run: loading.TrainedRun) -> dict:
  """{'latest': (step, params), 'best': (step, params)} of a ToP run's soft stage."""
  ckpts = checkpoints.StageCheckpoints(os.path.join(workdir, "soft"), read_only=True)
  states = {}
  for which, manager in (("latest", ckpts.latest), ("best", ckpts.best)):
    step = manager.latest_step()
    raw = manager.restore(step)["params"]
    states[which] = (int(step), {
        "model": checkpoints.cast_like(run.params["model"], raw["model"]),
        "pruning": jax.tree.map(jnp.asarray, raw["pruning"])})
  ckpts.close()
  return states


def top_rules(workdir: str, budget: Optional[float] = None,
              states: Optional[dict] = None,
              run: Optional[loading.TrainedRun] = None) -> dict:
  """A ToP run's checkpoints under each inference rule; one chosen on the slice.

  Args:
    workdir: A ToP run (soft stage).
    budget: Most relative FLOPs (on the slice) the choice may have; None: the run's
      soft-stage FLOPs budget from its summary.json, if any.
    states: {name: (step, params)}; default `top_states` (latest and best).
    run: The loaded run; default its soft stage.

  Returns:
    The result file: header, 'flops_budget', `rows`: every (checkpoint, rule) with
    its slice metrics; the one chosen on the slice also has its dev metrics at top
    level and 'chosen': True.
  """
  run = run or loading.load_run(workdir, stage="soft")
  if budget is None:
    budget = _soft_budget(workdir)
  evaluator = Evaluator(run, workdir)
  states = states or top_states(workdir, run)
  grid = [{"checkpoint": name, "step": step, "rule": rule}
          for name, (step, _) in states.items() for rule in top.INFERENCE_RULES]
  compiled, memo = {}, {}

  def evaluate(i, split):
    if (i, split) in memo:
      return memo[(i, split)]
    setting = grid[i]
    if setting["rule"] not in compiled:  # one program per rule, for every checkpoint
      method = _with_pruning(run, {"top_inference": setting["rule"]})[0]
      compiled[setting["rule"]] = (method, evaluator.compile(method))
    method, p_eval = compiled[setting["rule"]]
    params = states[setting["checkpoint"]][1]
    result = evaluator(p_eval, params, split, f"top {setting}")
    memo[(i, split)] = {**result, **method.metrics(params["pruning"])}
    return memo[(i, split)]

  # As training hands over: the best within the budget, else the fewest FLOPs.
  flops_on_slice = [evaluate(i, selection.SPLIT)["relative_flops"] for i in range(len(grid))]
  level = budget if budget is None or min(flops_on_slice) <= budget else min(flops_on_slice)
  candidates, chosen = choose_and_report(grid, evaluate, evaluator.metric, [level],
                                         evaluator.dev_splits)
  rows = [dict(c) for c in candidates]
  for row in chosen:
    rows[grid.index({k: row[k] for k in ("checkpoint", "step", "rule")})] = {
        **row, "chosen": True}
  header = _header(evaluator, workdir, [budget])
  del header["flops_levels"]
  return {**header, "flops_budget": budget, "rows": rows}


def _soft_budget(workdir: str) -> Optional[float]:
  path = os.path.join(workdir, "soft", "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("flops_budget")


def _evaluated(data: batching.Encoded, config) -> int:
  """How many examples of `data` `train.evaluate` counts (max_eval_examples caps)."""
  cap = config.data.max_eval_examples
  return len(data) if cap is None else min(cap, len(data))
