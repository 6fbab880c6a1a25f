"""Accuracy versus relative FLOPs of one task: its learned runs and training-free sweeps.

Collects finished runs (their summary.json) and the sweep files of
benchmarks/prune_sweep.py, sdtp_sweep.py and top_rules.py into one curve file and
plots it. Everything is measured against the task's one baseline
(benchmarks/results/baselines.json) and chosen on the held-out selection slice:
a run that started from another run, or chose its checkpoint on dev, is refused
(`tpjax.results.curves`). Each run's dev result is the one its training reported at
the checkpoint the slice chose; with --flops_levels each learned series keeps its best
run per level, judged on the slice. --earlier carries the points of runs whose
directories are gone (a fresh checkout) from an earlier curve file, when that file
measured against the same baseline run, slice and dev result.

    python benchmarks/plot_curve.py --task=sst2 \
        --ltp=runs/sst2_ltp_lam0.02,runs/sst2_ltp_lam0.05 \
        --top=runs/sst2_top_t0.3,runs/sst2_top_t0.5 \
        --topk_sweep=benchmarks/results/sst2_topk_sweep.json --out=benchmarks/results/sst2_curve
"""

import json
import os

from absl import flags

from tpjax import cli
from tpjax.data import glue
from tpjax.results import curves
from tpjax.results import files as result_files

_TASK = flags.DEFINE_enum("task", "sst2", list(glue.TASKS), "The task; its baseline is "
                          "the one benchmarks/results/baselines.json names.")
_LTP = flags.DEFINE_list("ltp", [], "LTP run directories.")
_TOPK_RUNS = flags.DEFINE_list("topk_runs", [], "Top-k runs fine-tuned with pruning.")
_TOP = flags.DEFINE_list("top", [], "ToP run directories.")
_TOP_RULES = flags.DEFINE_list("top_rules", [], "benchmarks/top_rules.py JSON files: "
                               "each one's setting chosen on the slice joins the ToP points.")
_TOPK_SWEEP = flags.DEFINE_string("topk_sweep", None, "prune_sweep.py JSON (top-k).")
_THRESHOLD_SWEEP = flags.DEFINE_string("threshold_sweep", None,
                                       "prune_sweep.py JSON (manual thresholds).")
_SDTP_RUNS = flags.DEFINE_list("sdtp_runs", [], "SDTP run directories (their own r).")
_SDTP = flags.DEFINE_list("sdtp", [], "benchmarks/sdtp_sweep.py JSON files: one trained "
                          "SDTP run at other keep ratios r, chosen on the slice.")
_EARLIER = flags.DEFINE_list("earlier", [], "Earlier curve files of the task (same "
                             "baseline): their trained runs' points join, for runs no "
                             "longer on disk; a run named again replaces its point.")
_LEVELS = flags.DEFINE_list("flops_levels", [], "Keep only each learned series' best run "
                            "(on the slice) at each of these relative FLOPs; empty: all.")
_RESULTS = flags.DEFINE_string("results", result_files.DEFAULT_DIR,
                               "Folder holding baselines.json.")
_OUT = flags.DEFINE_string("out", None, "Output path stem (default "
                           "benchmarks/results/<task>_curve).")


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  task = result_files.task_of(os.path.basename(path).removesuffix(".png"), result)
  name = glue.TASKS[task].tsv_dir
  fig, ax = plt.subplots(figsize=(6, 4.2))
  base = result["baseline"]
  run = base.get("run") or os.path.basename(os.path.normpath(base["workdir"]))
  epochs = base.get("epochs")
  label = f"unpruned: {run}" + (f", {epochs:g} epoch{'s' * (epochs != 1)}"
                                if isinstance(epochs, (int, float)) else "")
  if not result_files.uses_baseline(result, result_files.task_baseline(task)):
    label += ", not the task's baseline"
  ax.axhline(100 * base["accuracy"], color="gray", ls="--", lw=1, label=label)
  ax.axhline(100 * base["accuracy"] - 1, color="gray", ls=":", lw=1, label="unpruned - 1")
  below, above = (4, -10), (4, 4)  # the two training-free series often share a point
  series = [("ltp", "LTP (soft + hard)", "o-", "C0", below),
            ("top", "ToP (gates + distillation)", "D-", "C3", below),
            ("sdtp", "SDTP (saliency-trained modules)", "v-", "C4", below),
            ("topk_finetuned", "top-k (hard fine-tune)", "s", "C1", below),
            ("topk_training_free", "top-k (training-free)", "^--", "C2", above),
            ("threshold_training_free", "thresholds (training-free)", "x--", "C5", below)]
  for key, label, style, color, offset in series:
    points = sorted(result.get(key) or [], key=lambda p: p["relative_flops"])
    if points:
      ax.plot([p["relative_flops"] for p in points], [100 * p["accuracy"] for p in points],
              style, color=color, label=label)
      for p in points:
        ax.annotate(result_files.setting_label(p), (p["relative_flops"], 100 * p["accuracy"]),
                    textcoords="offset points", xytext=offset, fontsize=7)
  ax.set_xlabel("relative FLOPs (real lengths)")
  ax.set_ylabel(f"{name} dev accuracy (%)")
  ax.set_title(f"MiniLM-L6 on {name}: accuracy vs FLOPs,\nchosen on "
               f"{result_files.selection_label(result)}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  task = _TASK.value
  runs = {"ltp": _LTP.value, "top": _TOP.value, "topk_finetuned": _TOPK_RUNS.value}
  if _SDTP_RUNS.value:
    runs["sdtp"] = _SDTP_RUNS.value
  sweeps = [p for p in (_TOPK_SWEEP.value, _THRESHOLD_SWEEP.value) if p]
  result = curves.collect(task, runs, _TOP_RULES.value, sweeps, _SDTP.value,
                          [float(v) for v in _LEVELS.value] or None, _RESULTS.value,
                          _EARLIER.value)
  out = _OUT.value or f"{result_files.DEFAULT_DIR}/{task}_curve"
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=2)
  plot(result, out + ".png")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
