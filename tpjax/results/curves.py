"""Curve files from finished runs: one baseline per task, every choice on the slice.

`benchmarks/plot_curve.py` and `benchmarks/ltp_variants_table.py` collect trained runs
(their summary.json) and the sweeps of `tpjax.training.sweep` into one curve file
per task. Everything in it must
  - compare against the task's one baseline (`files.task_baseline`): a trained run
    starts from its workdir (`init_from`), a sweep prunes it or a run started from it;
  - have been chosen on the held-out selection slice, the same slice as the baseline's:
    each run's checkpoint (train.py), each sweep's settings (`sweep.choose_and_report`).
Anything else is a `ValueError` naming the run. Learned runs are all points of their
series; with FLOPs levels, each series keeps only its best run per level, judged on
the slice (`choose_runs`), as the training-free sweeps do. A run whose directory is
gone keeps its point through an earlier curve file of the same baseline
(`carried_points`).
`baseline_entry` turns a finished fine-tune into its task's baselines.json entry.
"""

import json
import os
from typing import Optional, Sequence

from tpjax.data import glue
from tpjax.results import files
from tpjax.training import selection

# Summary config fields that tell a method's runs apart, copied into each point.
SETTINGS = ("reg_lambda", "keep_rate", "top_target", "sdtp_keep_ratio", "variant")
# The slice record's fields two runs must share to have held out the same examples.
_SLICE = ("fraction", "max_examples", "seed", "examples", "train_examples")
# Series whose points are trained runs (a sweep's points are collected from its file).
RUN_SERIES = ("ltp", "top", "topk_finetuned", "sdtp")


def read_summary(workdir: str) -> dict:
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no summary.json: not a finished run.")
  with open(path) as f:
    return json.load(f)


def run_point(workdir: str, summary: Optional[dict] = None) -> dict:
  """One finished run as a curve point: its dev result and how it was chosen.

  Args:
    workdir: The run's directory.
    summary: Its summary.json, if already read.

  Returns:
    {'workdir', 'method', the first dev split's metrics ('accuracy', the task's
    metric, 'relative_flops', 'tokens_kept_per_layer'), the SETTINGS of its config,
    'selected_on', 'selection' (its metrics on the slice that chose its checkpoint),
    'slice' (the slice record), 'init_from', 'epochs' (per stage), 'wall_time_s',
    'slice_curve' (`stage_curve`)}.
  """
  summary = summary or read_summary(workdir)
  task = summary["task"]
  info = glue.TASKS[task]
  dev = summary["dev"][info.eval_splits[0]]
  record = summary.get("selection") or {}  # absent: made before the slice existed
  chosen = selection.SPLIT if record.get("split") == selection.SPLIT else selection.DEV
  pruning = summary["config"]["pruning"]
  point = {"workdir": workdir, "method": summary["method"], "task": task,
           "accuracy": dev["accuracy"], info.metric: dev[info.metric],
           "relative_flops": dev["relative_flops"],
           "tokens_kept_per_layer": dev["tokens_kept_per_layer"],
           **{k: pruning.get(k) for k in SETTINGS},
           "selected_on": chosen,
           "selection": record.get("metrics"),
           "slice": {k: record[k] for k in _SLICE if k in record},
           "init_from": summary["config"].get("init_from", ""),
           "epochs": {name: stage["epochs"] for name, stage in summary["stages"].items()},
           "wall_time_s": round(summary["wall_time_s"]),
           "slice_curve": stage_curve(workdir, info.metric, summary["stages"])}
  return point


def _same_dir(a: str, b: str) -> bool:
  return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def baseline_point(task: str, results_dir: str = files.DEFAULT_DIR) -> dict:
  """The task's one baseline run as a curve's 'baseline' entry.

  Raises:
    ValueError: If the task names no baseline (`files.BASELINES`), or the baseline
      chose its checkpoint on dev (its slice is then no held-out slice).
  """
  entry = files.task_baseline(task, results_dir)
  if not entry:
    raise ValueError(f"Task {task!r} names no baseline in "
                     f"{os.path.join(results_dir, files.BASELINES)}; record one with "
                     "benchmarks/baseline.py.")
  point = run_point(entry["workdir"])
  if point["selected_on"] != selection.SPLIT:
    raise ValueError(f"The {task} baseline {entry['workdir']!r} chose its checkpoint "
                     "on dev (no held-out slice): fine-tune it again with "
                     "data.selection_fraction > 0 and record it with "
                     "benchmarks/baseline.py.")
  return {**point, "run": entry["run"], "epochs": entry.get("epochs")}


def check_run(point: dict, baseline: dict) -> None:
  """Refuses a run that started elsewhere than `baseline` or chose on dev.

  Raises:
    ValueError: naming the run and what is wrong.
  """
  where = point["workdir"]
  if point["selected_on"] != selection.SPLIT:
    raise ValueError(f"{where!r} chose its checkpoints on dev (no held-out slice); "
                     "train it again with data.selection_fraction > 0.")
  if not _same_dir(point["init_from"], baseline["workdir"]):
    raise ValueError(f"{where!r} started from {point['init_from'] or 'pretrained weights'}"
                     f", not from the {baseline['task']} baseline {baseline['workdir']!r}"
                     f" ({files.BASELINES}); every point of a curve starts from it.")
  if point["slice"] != baseline["slice"]:
    raise ValueError(f"{where!r} chose on another slice ({point['slice']}) than its "
                     f"baseline ({baseline['slice']}).")


def check_sweep(data: dict, baseline: dict, source: str) -> None:
  """Refuses a sweep file that chose on dev or prunes another baseline.

  A training-free sweep must prune the baseline itself; an SDTP or ToP sweep, a run
  that started from it (`check_run`).
  """
  if files.selected_on(data) != selection.SPLIT:
    raise ValueError(f"{source} chose its settings on dev (made before the held-out "
                     "slice); run its sweep again.")
  if _same_dir(data["workdir"], baseline["workdir"]):
    return
  check_run(run_point(data["workdir"]), baseline)


def choose_runs(points: Sequence[dict], metric: str,
                levels: Optional[Sequence[float]]) -> list:
  """The runs of one series a curve shows: all, or the best per FLOPs level.

  Args:
    points: `run_point`s, each with its slice metrics under 'selection'.
    metric: The task's selection metric.
    levels: FLOPs levels; None or empty: every run is shown (no choice is made).

  Returns:
    Points; with levels, each chosen run once with 'flops_levels', judged on the
    slice only (`selection.choose`).
  """
  if not levels:
    return list(points)
  chosen = {}
  for level, i in selection.choose(points, metric, levels):
    chosen.setdefault(i, []).append(level)
  return [{**points[i], "flops_levels": chosen[i]} for i in sorted(chosen)]


def header(baseline: dict, levels: Optional[Sequence[float]]) -> dict:
  """What every curve file records about its baseline and its choices."""
  record = dict(baseline["slice"], split=selection.SPLIT)
  return {"task": baseline["task"], "metric": glue.TASKS[baseline["task"]].metric,
          "selected_on": selection.SPLIT, "selection": record,
          "flops_levels": list(levels) if levels else None, "baseline": baseline}


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def carried_points(path: str, baseline: dict) -> dict:
  """The trained runs' points of an earlier curve file, for runs no longer on disk.

  A point is what its run's summary said when the file was made. It is carried only
  when that file measured against this very baseline: the same run directory, slice
  and dev result (a fine-tune rerun with the same command reproduces them exactly on
  the same machine; one that does not is another baseline).

  Args:
    path: An earlier curve file of the task.
    baseline: `baseline_point` of the task now.

  Returns:
    {series key: [points]}, each point with 'carried_from' (the first file it was
    carried from) and without the earlier file's 'flops_levels'.

  Raises:
    ValueError: If the file's baseline differs, or a point fails `check_run`.
  """
  earlier = _load(path)
  old = earlier.get("baseline") or {}
  differ = {k: (old.get(k), baseline[k]) for k in ("workdir", "task", "slice", "accuracy")
            if old.get(k) != baseline[k]}
  if "workdir" in differ and _same_dir(old.get("workdir", ""), baseline["workdir"]):
    del differ["workdir"]  # the same directory, spelt another way
  if differ:
    raise ValueError(f"{path} was measured against another baseline than "
                     f"{baseline['workdir']!r} now: " + "; ".join(
                         f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items()))
  carried = {}
  for key in RUN_SERIES:
    for p in earlier.get(key) or []:
      if "init_from" not in p:  # a sweep's point: its file is collected again
        continue
      check_run(p, baseline)
      point = {k: v for k, v in p.items() if k != "flops_levels"}
      point.setdefault("carried_from", path)
      carried.setdefault(key, []).append(point)
  return carried


def collect(task: str, runs: dict, top_rules=(), sweeps=(), sdtp=(), levels=None,
            results_dir: str = files.DEFAULT_DIR, earlier=()) -> dict:
  """The curve file of `task`: its baseline, runs and sweeps, all checked.

  Args:
    task: GLUE task.
    runs: {series key ('ltp', 'top', 'topk_finetuned', 'sdtp'): run directories}.
    top_rules: top_rules.py files: their chosen row joins 'top'.
    sweeps: prune_sweep.py files: their chosen rows become '<method>_training_free'.
    sdtp: sdtp_sweep.py files: their chosen points join 'sdtp'.
    levels: FLOPs levels for the learned series, or None (every run).
    results_dir: Where baselines.json is.
    earlier: Earlier curve files of the task: their trained runs' points join
      (`carried_points`), except where `runs` names the same directory again.

  Raises:
    ValueError: If anything chose on dev or is not measured against the task's
      baseline (`check_run`, `check_sweep`, `carried_points`).
  """
  baseline = baseline_point(task, results_dir)
  metric = glue.TASKS[task].metric
  result = header(baseline, levels)
  carried = {}
  for path in earlier:
    for key, points in carried_points(path, baseline).items():
      carried.setdefault(key, []).extend(points)
  for key in [*runs, *(k for k in carried if k not in runs)]:
    points = [run_point(w) for w in runs.get(key, [])]
    for p in points:
      check_run(p, baseline)
    points = [p for p in carried.get(key, [])
              if not any(_same_dir(p["workdir"], q["workdir"]) for q in points)] + points
    result[key] = choose_runs(points, metric, levels)
  for path in top_rules:
    rules = _load(path)
    check_sweep(rules, baseline, path)
    run = run_point(rules["workdir"])
    for r in rules["rows"]:
      if r.get("chosen"):
        result.setdefault("top", []).append(
            {**{k: v for k, v in r.items() if k != "dev"}, "workdir": rules["workdir"],
             "method": "top", "top_target": run["top_target"], "source": path,
             "selected_on": rules["selected_on"]})
  for path in sdtp:
    sweep = _load(path)
    check_sweep(sweep, baseline, path)
    result.setdefault("sdtp", []).extend(
        {"workdir": sweep["workdir"], "source": path, "selected_on": sweep["selected_on"],
         **p} for p in sweep["points"])
  for path in sweeps:
    sweep = _load(path)
    check_sweep(sweep, baseline, path)
    result[f"{sweep['method']}_training_free"] = [
        {**row, "source": path} for row in sweep["rows"] if row["method"] != "none"]
  return result


def stage_curve(workdir: str, metric: str, stages) -> list:
  """[[stage, step, metric, relative FLOPs], ...]: every held-out slice evaluation of
  each of `stages` in turn (a stage without a metrics file is skipped), so a curve
  shows whether the selected run had stopped improving."""
  curve = []
  for stage in stages:
    path = os.path.join(workdir, stage, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    curve += [[stage, r["step"], r[metric], r["relative_flops"]] for r in rows
              if r.get("split") == f"eval_{selection.SPLIT}"]
  return curve


def load_average(path: str) -> dict:
  """{'samples', 'mean', 'max'} of the load averages in `path`, one per line."""
  with open(path) as f:
    load = [float(x) for x in f.read().split()]
  if not load:
    raise ValueError(f"{path!r} holds no load average samples.")
  return {"samples": len(load), "mean": round(sum(load) / len(load), 2), "max": max(load)}


def baseline_entry(task: str, workdir: str, command: str, epochs=None, load_log=None) -> dict:
  """The baselines.json entry of finished run `workdir`.

  Raises:
    ValueError: If the run chose its checkpoint on dev (no held-out slice), or has
      no finetune stage.
  """
  summary = read_summary(workdir)
  point = run_point(workdir, summary)
  if summary["task"] != task or "finetune" not in summary["stages"]:
    raise ValueError(f"{workdir!r} is no {task} fine-tune (task {summary['task']}, "
                     f"stages {list(summary['stages'])}).")
  if point["selected_on"] != selection.SPLIT:
    raise ValueError(f"{workdir!r} chose its checkpoint on dev: a baseline holds the "
                     "selection slice out (data.selection_fraction > 0).")
  finetune = summary["config"]["stage_settings"]["finetune"]
  metric = glue.TASKS[task].metric
  entry = {"run": os.path.basename(os.path.normpath(workdir)), "workdir": workdir,
           "epochs": epochs if epochs is not None else summary["stages"]["finetune"]["epochs"],
           "learning_rate": finetune["learning_rate"],
           "selected_on": selection.SPLIT,
           "selection": {k: v for k, v in summary["selection"].items() if k != "metrics"},
           "accuracy": point["accuracy"], "relative_flops": point["relative_flops"],
           "tokens_kept_per_layer": point["tokens_kept_per_layer"],
           "wall_time_s": point["wall_time_s"], "command": command,
           # the fine-tune's slice evaluations: whether the metric had stopped rising
           "slice_curve": [[step, value] for stage, step, value, _ in point["slice_curve"]
                           if stage == "finetune"]}
  if metric != "accuracy":
    entry[metric] = point[metric]
  if load_log:
    entry["load_average"] = load_average(load_log)
  return entry
