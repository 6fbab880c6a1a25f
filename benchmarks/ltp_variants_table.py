"""Collects LTP runs into benchmarks/results/sst2_ltp_variants.json (a curve file).

    python benchmarks/ltp_variants_table.py runs/sst2_ltp_reference_lam0.6 ...

Series 'ltp' holds the tpjax-variant runs and 'ltp_reference' the reference-variant
runs, each point the hard stage's dev result plus the soft stage's end point, the hard
stage's FLOPs drift, epochs and wall times; `python -m tpjax.report` renders the table.
"""

import json
import os
import sys

BASELINE = "runs/sst2_ft"
OUT = "benchmarks/results/sst2_ltp_variants.json"


def _load(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def point(workdir: str) -> dict:
  summary = _load(workdir)
  pruning = summary["config"]["pruning"]
  soft, hard = summary["stages"]["soft"], summary["stages"]["hard"]
  dev, soft_dev = hard["dev"]["validation"], soft["dev"]["validation"]
  return {"workdir": workdir, "method": "ltp", "variant": pruning["variant"],
          "reg_lambda": pruning["reg_lambda"], "accuracy": dev["accuracy"],
          "relative_flops": dev["relative_flops"],
          "tokens_kept_per_layer": dev["tokens_kept_per_layer"],
          "soft_accuracy": soft_dev["accuracy"],
          "soft_relative_flops": soft_dev["relative_flops"],
          "flops_drift": hard["flops_drift"], "thresholds": soft["pruning"]["thresholds"],
          "epochs": {"soft": soft["epochs"], "hard": hard["epochs"]},
          "wall_time_s": {"soft": round(soft["wall_time_s"]),
                          "hard": round(hard["wall_time_s"])}}


def main(workdirs):
  base = _load(BASELINE)
  dev = base["dev"]["validation"]
  points = [point(w) for w in workdirs]
  result = {"baseline": {"workdir": BASELINE, "accuracy": dev["accuracy"],
                         "relative_flops": dev["relative_flops"],
                         "tokens_kept_per_layer": dev["tokens_kept_per_layer"],
                         "epochs": base["stages"]["finetune"]["epochs"],
                         "wall_time_s": round(base["wall_time_s"])},
            "ltp": [p for p in points if p["variant"] == "tpjax"],
            "ltp_reference": [p for p in points if p["variant"] == "reference"]}
  with open(OUT, "w") as f:
    json.dump(result, f, indent=2)
  print("| variant | λ | soft end: acc / FLOPs | hard: acc / FLOPs | drift | wall s |")
  for p in points:
    print(f"| {p['variant']} | {p['reg_lambda']} | {100 * p['soft_accuracy']:.2f} / "
          f"{p['soft_relative_flops']:.3f} | {100 * p['accuracy']:.2f} / "
          f"{p['relative_flops']:.3f} | {p['flops_drift']:+.3f} | "
          f"{p['wall_time_s']['soft']} + {p['wall_time_s']['hard']} |")


if __name__ == "__main__":
  main(sys.argv[1:])
