"""Collects LTP runs into benchmarks/results/<task>_ltp_variants.json (a curve file).

    python benchmarks/ltp_variants_table.py --task=sst2 runs/sst2_ltp_reference_lam0.6 ...

Series 'ltp' holds the tpjax-variant runs and 'ltp_reference' the reference-variant
runs, each point the hard stage's dev result (at the checkpoint the held-out slice
chose) plus the soft stage's end point on dev, the hard stage's FLOPs drift, epochs
and wall times; `python -m tpjax.report` renders the table. Every run must start from
the task's baseline (benchmarks/results/baselines.json) and choose on the slice
(`tpjax.results.curves`).
"""

import json

from absl import flags

from tpjax import cli
from tpjax.data import glue
from tpjax.results import curves

_TASK = flags.DEFINE_enum("task", "sst2", list(glue.TASKS), "The runs' task.")
_OUT = flags.DEFINE_string("out", None, "Output path (default "
                           "benchmarks/results/<task>_ltp_variants.json).")


def point(workdir: str) -> dict:
  summary = curves.read_summary(workdir)
  soft, hard = summary["stages"]["soft"], summary["stages"]["hard"]
  split = glue.TASKS[summary["task"]].eval_splits[0]
  soft_dev = soft["dev"][split]
  return {**curves.run_point(workdir, summary),
          "soft_accuracy": soft_dev["accuracy"],
          "soft_relative_flops": soft_dev["relative_flops"],
          "flops_drift": hard["flops_drift"], "thresholds": soft["pruning"]["thresholds"],
          "wall_time_s": {"soft": round(soft["wall_time_s"]),
                          "hard": round(hard["wall_time_s"])}}


def main(argv):
  workdirs = argv[1:]
  baseline = curves.baseline_point(_TASK.value)
  points = [point(w) for w in workdirs]
  for p in points:
    curves.check_run(p, baseline)
  result = {**curves.header(baseline, None),
            "ltp": [p for p in points if p["variant"] == "tpjax"],
            "ltp_reference": [p for p in points if p["variant"] == "reference"]}
  with open(_OUT.value or f"benchmarks/results/{_TASK.value}_ltp_variants.json", "w") as f:
    json.dump(result, f, indent=2)
  print("| variant | λ | soft end: acc / FLOPs | hard: acc / FLOPs | drift | wall s |")
  for p in points:
    print(f"| {p['variant']} | {p['reg_lambda']} | {100 * p['soft_accuracy']:.2f} / "
          f"{p['soft_relative_flops']:.3f} | {100 * p['accuracy']:.2f} / "
          f"{p['relative_flops']:.3f} | {p['flops_drift']:+.3f} | "
          f"{p['wall_time_s']['soft']} + {p['wall_time_s']['hard']} |")


if __name__ == "__main__":
  cli.run(main)
