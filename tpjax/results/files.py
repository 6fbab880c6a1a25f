"""Reads the measurements in benchmarks/results/*.json for plots and README tables.

Each file's kind is told by a key only that kind has (`kind_of`):
  curve      `benchmarks/plot_curve.py`: the unpruned run and trained runs, each with
             dev accuracy and relative FLOPs ("baseline" and "ltp");
  sweep      `benchmarks/prune_sweep.py`: training-free pruning of one run ("rows" and
             "method");
  inference  `python -m tpjax.benchmark`: throughput and latency per system ("systems");
  ratios     `benchmarks/sdtp_sweep.py`: one trained SDTP run at other keep ratios
             ("points");
  rules      `benchmarks/top_rules.py`: one ToP run under both inference rules ("rows"
             whose entries have "rule");
  decoder_speed          `benchmarks/decoder_speed.py` ("decode_prompt_tokens");
  sdtp_decoder_eval      `benchmarks/sdtp_decoder_quality.py` ("bootstrap");
  sdtp_decoder_speed     `benchmarks/sdtp_decoder_speed.py` ("schedule" and "summary");
  sdtp_decoder_training  `benchmarks/sdtp_decoder_training.py` ("topk_agreement");
  sdtp_decoder_kept      `benchmarks/sdtp_decoder_kept.py` ("kept_profile");
  engine_designs         `benchmarks/engine_designs.py` ("best_ms");
  train_speed            `benchmarks/train_speed.py` ("checkouts");
  fresh_clone            `benchmarks/fresh_clone.sh`: make run/test timed ("install_s");
  headline   not a measurement: the runs README's headline table shows ("headline"),
             each by run name and, where two curve files hold that name, its "curve";
  baselines  not a measurement: the one baseline run of each task ("baselines"), which
             every curve, table and plot of the task compares against (`task_baseline`).
Files written since the held-out selection slice record `selected_on: 'selection'` and
the slice (`tpjax.training.selection.slice_record`); a file without it chose its
checkpoints and settings on dev (`selected_on`).
Files of other shapes are skipped by the plots, so new result kinds never break them;
a README table of an unknown kind is an error.
"""

import dataclasses
import glob
import json
import os
from typing import Optional

from tpjax.data import glue
from tpjax.training import selection

DEFAULT_DIR = os.path.join("benchmarks", "results")
# The file naming each task's one baseline run: {"baselines": {task: entry}}, each
# entry {"run": name, "workdir": path, "epochs": fine-tune epochs, "command": ...,
# "selected_on": ...} and, once `benchmarks/baseline.py` recorded it, its dev metrics.
BASELINES = "baselines.json"

# Display names of the systems `tpjax.benchmark` measures, in table order.
SYSTEM_NAMES = {
    "pruned": "pruned (compaction engine)",
    "unpruned": "unpruned (plain padded forward)",
    "keep_all": "keep-all compaction path",
    "padded": "unpruned, padded to {length}",
    "pruned_bf16": "pruned, bf16 dots",
    "unpruned_bf16": "unpruned, bf16 dots",
    "hf_pytorch": "HF PyTorch eager, own process",
    "hf_pytorch_bf16": "HF PyTorch eager, bf16 autocast, own process",
    "onnxruntime": "ONNX Runtime, BERT fusions, own process",
    "onnxruntime_int8": "ONNX Runtime, BERT fusions, int8 dynamic, own process",
}


@dataclasses.dataclass(frozen=True)
class Point:
  """One model on the accuracy-versus-FLOPs plane.

  Attributes:
    series: What produced it, e.g. 'LTP' or 'topk, training-free'.
    relative_flops: Pruned over unpruned MACs on real lengths.
    accuracy: Dev accuracy in [0, 1].
    label: Its setting, e.g. 'λ=0.05' or 'k=0.3'; '' when none.
    source: File name it was read from.
    selected_on: 'selection' when its checkpoint and setting were chosen on the
      held-out slice, 'dev' when on dev (every file made before the slice).
  """
  series: str
  relative_flops: float
  accuracy: float
  label: str
  source: str
  selected_on: str = selection.DEV


def read_all(results_dir: str = DEFAULT_DIR) -> dict:
  """Returns {file name: parsed JSON} for every *.json in `results_dir`, sorted."""
  out = {}
  for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    with open(path) as f:
      out[os.path.basename(path)] = json.load(f)
  return out


def is_curve(data) -> bool:
  return isinstance(data, dict) and "baseline" in data and "ltp" in data


def is_sweep(data) -> bool:
  return isinstance(data, dict) and "rows" in data and "method" in data


def is_inference(data) -> bool:
  return isinstance(data, dict) and "systems" in data and "task" in data


def is_ratio_sweep(data) -> bool:
  return isinstance(data, dict) and "points" in data and "workdir" in data


def is_rules(data) -> bool:
  return (isinstance(data, dict) and isinstance(data.get("rows"), list)
          and bool(data["rows"]) and "rule" in data["rows"][0])


def selected_on(entry: dict) -> str:
  """'selection' if a result file (or one point of it) chose on the held-out slice,
  else 'dev': files without `selected_on` were made before the slice existed."""
  value = entry.get("selected_on") if isinstance(entry, dict) else None
  return selection.SPLIT if value == selection.SPLIT else selection.DEV


def selection_label(data: dict) -> str:
  """'dev' or 'held-out slice (2000 train examples, seed 0)', of a file or point."""
  if selected_on(data) != selection.SPLIT:
    return "dev"
  record = data.get("selection") or {}
  if "examples" not in record:  # a point: its file's record says the size
    return "held-out slice"
  return (f"held-out slice ({record['examples']} train examples, seed "
          f"{record['seed']})")


def baselines(results_dir: str = DEFAULT_DIR) -> dict:
  """{task: entry} from `BASELINES`: the one baseline run of each task; {} if none."""
  path = os.path.join(results_dir, BASELINES)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)["baselines"]


def task_baseline(task: str, results_dir: str = DEFAULT_DIR) -> Optional[dict]:
  """The baseline entry of `task` (see `BASELINES`), or None when none is named."""
  return baselines(results_dir).get(task)


def baseline_record(workdir: str, task: str, results_dir: str = DEFAULT_DIR) -> dict:
  """{'run', 'workdir', 'epochs'} of an unpruned run a sweep prunes; the epochs are
  the task's baseline's when it is that run, else unknown (None)."""
  entry = task_baseline(task, results_dir) or {}
  run = os.path.basename(os.path.normpath(workdir))
  return {"run": run, "workdir": workdir,
          "epochs": entry.get("epochs") if run == entry.get("run") else None}


def baseline_of(data: dict) -> tuple:
  """(run name, fine-tune epochs or None) of the unpruned run a curve or sweep file
  compares against: a curve's 'baseline' entry, a sweep's own run."""
  base = data.get("baseline")
  if not isinstance(base, dict):
    base = data
  run = base.get("run") or os.path.basename(os.path.normpath(base.get("workdir") or ""))
  return run, base.get("epochs")


def uses_baseline(data: dict, entry: Optional[dict]) -> bool:
  """Whether a curve or sweep file compares against baseline `entry` (its run, and
  its epochs where both say: `sst2_ft` named two runs of different length)."""
  if not entry:
    return False
  run, epochs = baseline_of(data)
  if run != entry["run"]:
    return False
  return epochs is None or entry.get("epochs") is None or (
      float(epochs) == float(entry["epochs"]))


def task_of(name: str, data: dict) -> str:
  """The task of a result file: its 'task' entry, else its name's prefix."""
  return data.get("task") or name.split("_", 1)[0]


def kind_of(data) -> str:
  """The kind of a result file (see the module docstring), or '' when unknown."""
  if not isinstance(data, dict):
    return ""
  if is_curve(data):
    return "curve"
  if is_sweep(data):
    return "sweep"
  if is_inference(data):
    return "inference"
  if is_rules(data):
    return "rules"
  if isinstance(data.get("cpu"), dict):  # precision_dots.py: the CPU it ran on
    data = {**data, "matrix_flags": data["cpu"].get("matrix_flags")}
  for kind, key in (("headline", "headline"), ("baselines", "baselines"),
                    ("ratios", "points"),
                    ("decoder_speed", "decode_prompt_tokens"),
                    ("sdtp_decoder_eval", "bootstrap"),
                    ("sdtp_decoder_training", "topk_agreement"),
                    ("sdtp_decoder_kept", "kept_profile"),
                    ("engine_designs", "best_ms"), ("train_speed", "checkouts"),
                    ("train_speed", "dtypes"), ("precision_dots", "matrix_flags"),
                    ("precision_quality", "precision_quality"),
                    ("fresh_clone", "install_s")):
    if key in data:
      return kind
  if "schedule" in data and "summary" in data:
    return "sdtp_decoder_speed"
  return ""


# Curve-file keys holding trained runs, and their series names; the file's
# "topk_training_free" list copies a sweep file and is read from there instead.
_RUN_SERIES = {"ltp": "LTP", "ltp_reference": "LTP, reference variant", "top": "ToP",
               "topk_finetuned": "topk, fine-tuned", "sdtp": "SDTP"}
# Method -> (the setting that tells its points apart, its symbol).
_SETTINGS = {"ltp": ("reg_lambda", "λ"), "top": ("top_target", "t"),
             "topk": ("keep_rate", "k"), "threshold": ("final_threshold", "θ"),
             "sdtp": ("sdtp_keep_ratio", "r")}


def setting_label(entry: dict) -> str:
  """'λ=0.05' for an LTP run, 't=0.5' ToP, 'k=0.3' top-k; '' when unknown.

  Args:
    entry: A run point of a curve file or a row of a sweep file.
  """
  key, symbol = _SETTINGS.get(entry.get("method"), (None, None))
  value = entry.get(key) if key else None
  return "" if value is None else f"{symbol}={value}"


def curve_runs(data: dict) -> list:
  """(series name, run points) of a curve file, the unpruned baseline left out, and
  the training-free series too (their sweep files are read instead)."""
  return [(_RUN_SERIES.get(key, key), runs) for key, runs in data.items()
          if key != "baseline" and not key.endswith("_training_free")
          and isinstance(runs, list) and all(isinstance(p, dict) for p in runs)]


def sweep_name(data: dict) -> str:
  """'topk, 1 full layer', 'topk, reference schedule' or the method, of a sweep."""
  if data["method"] != "topk":
    return data["method"]
  if len({g.get("topk_full_layers") for g in data.get("grid", [])}) > 1:
    return "topk"  # several counts of full layers tried; each row says its own
  full = data["rows"][-1].get("topk_full_layers") or 0
  return f"topk, {full} full layer{'s' * (full != 1)}" if full else (
      "topk, reference schedule")


def _curve_points(name: str, data: dict) -> list:
  base = data["baseline"]
  chosen = selected_on(data)
  points = [Point("unpruned", base["relative_flops"], base["accuracy"], "", name,
                  selected_on(base) if chosen == selection.SPLIT else chosen)]
  for series, runs in curve_runs(data):
    points += [Point(series, p["relative_flops"], p["accuracy"], setting_label(p), name,
                     selected_on(p) if chosen == selection.SPLIT else chosen)
               for p in runs]
  return points


def _sweep_points(name: str, data: dict) -> list:
  series = f"{sweep_name(data)}, training-free"
  return [Point(series, row["relative_flops"], row["accuracy"], setting_label(row),
                name, selected_on(data))
          for row in data["rows"] if row["method"] != "none"]  # none: the baseline


def accuracy_points(results_dir: str = DEFAULT_DIR, task: str = "sst2") -> list:
  """Every accuracy-versus-FLOPs point measured for `task` against its one baseline.

  Args:
    results_dir: Folder of result JSON files.
    task: GLUE task; curve and sweep files are named `<task>_*.json`. Only files
      whose baseline is the task's (`task_baseline`, `uses_baseline`) count, so
      points measured from baselines of other lengths never share a plot.

  Returns:
    `Point`s, in file order; [] when the task names no baseline.
  """
  points = []
  entry = task_baseline(task, results_dir)
  for name, data in read_all(results_dir).items():
    if not name.startswith(f"{task}_") or not uses_baseline(data, entry):
      continue
    if is_curve(data):
      points += _curve_points(name, data)
    elif is_sweep(data):
      points += _sweep_points(name, data)
  return points


def pareto_front(points: list) -> list:
  """The points no other point beats on both FLOPs (lower) and accuracy (higher).

  Args:
    points: `Point`s.

  Returns:
    The front, by increasing relative FLOPs (and so increasing accuracy).
  """
  front = []
  for p in sorted(points, key=lambda p: (p.relative_flops, -p.accuracy)):
    if not front or p.accuracy > front[-1].accuracy:
      front.append(p)
  return front


def inference_results(results_dir: str = DEFAULT_DIR) -> dict:
  """Returns {file name: result} for every `tpjax.benchmark` file."""
  return {name: data for name, data in read_all(results_dir).items()
          if is_inference(data)}


def system_name(name: str, result: dict) -> str:
  """Display name of system `name` of benchmark `result`."""
  length = (result.get("buckets") or ["max length"])[-1]
  return SYSTEM_NAMES.get(name, name).format(length=length)


def describe_inference(result: dict) -> str:
  """A title for one benchmark, e.g. 'SST-2 dev (872), run sst2_ltp (ltp), 0.622 FLOPs'.

  The engine version is added as the file records it ("engine"), or said to be
  unrecorded.

  Args:
    result: A `tpjax.benchmark` result.

  Returns:
    Task, split and size, the run, and the pruned model's relative FLOPs.
  """
  task = glue.TASKS[result["task"]].tsv_dir if result["task"] in glue.TASKS else (
      result["task"])
  split = result["split"].replace("validation", "dev")
  run = os.path.basename(os.path.normpath(result["workdir"]))
  text = f"{task} {split} ({result['examples']}), run {run} ({result['method']})"
  flops = result.get("pruning", {}).get("relative_flops")
  text += f", {flops:.3f} FLOPs" if flops is not None else ""
  return text + f", engine {result.get('engine', 'not recorded')}"
