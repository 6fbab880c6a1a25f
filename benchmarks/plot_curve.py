"""Accuracy versus relative FLOPs on SST-2: LTP, ToP and SDTP runs against top-k.

Collects the dev results of finished runs (their summary.json) and a training-free
top-k sweep (benchmarks/prune_sweep.py output), writes them to one JSON file and
plots them.

    python benchmarks/plot_curve.py --ltp=runs/sst2_ltp_lam0.02,runs/sst2_ltp_lam0.05 \
        --topk_runs=runs/sst2_topk0.4 --topk_sweep=benchmarks/results/sst2_topk_sweep.json \
        --top=runs/sst2_top_t0.5 --out=benchmarks/results/sst2_curve
"""

import json
import os

from absl import app
from absl import flags

_LTP = flags.DEFINE_list("ltp", [], "LTP run directories.")
_TOPK_RUNS = flags.DEFINE_list("topk_runs", [], "Top-k runs fine-tuned with pruning.")
_TOP = flags.DEFINE_list("top", [], "ToP run directories.")
_TOP_RULES = flags.DEFINE_list("top_rules", [], "benchmarks/top_rules.py JSON files: their "
                               "final-state, 'expected'-rule rows join the ToP points.")
_TOPK_SWEEP = flags.DEFINE_string("topk_sweep", None, "prune_sweep.py JSON (top-k).")
_SDTP_RUNS = flags.DEFINE_list("sdtp_runs", [], "SDTP run directories (their own r).")
_SDTP = flags.DEFINE_list("sdtp", [], "benchmarks/sdtp_sweep.py JSON files: one trained "
                          "SDTP run at other keep ratios r.")
_BASELINE = flags.DEFINE_string("baseline", "runs/sst2_ft", "The unpruned run.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/sst2_curve", "Output path stem.")


def _run_point(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  dev = summary["dev"]["validation"]
  return {"workdir": workdir, "method": summary["method"], "accuracy": dev["accuracy"],
          "relative_flops": dev["relative_flops"],
          "tokens_kept_per_layer": dev["tokens_kept_per_layer"],
          "reg_lambda": summary["config"]["pruning"].get("reg_lambda"),
          "keep_rate": summary["config"]["pruning"].get("keep_rate"),
          "top_target": summary["config"]["pruning"].get("top_target"),
          "sdtp_keep_ratio": summary["config"]["pruning"].get("sdtp_keep_ratio")}


def main(argv):
  del argv
  result = {"baseline": _run_point(_BASELINE.value),
            "ltp": [_run_point(w) for w in _LTP.value],
            "topk_finetuned": [_run_point(w) for w in _TOPK_RUNS.value],
            "top": [_run_point(w) for w in _TOP.value],
            "topk_training_free": []}
  if _SDTP_RUNS.value or _SDTP.value:
    result["sdtp"] = [_run_point(w) for w in _SDTP_RUNS.value]
  for path in _SDTP.value:
    with open(path) as f:
      sweep = json.load(f)
    result["sdtp"].extend(
        {"workdir": sweep["workdir"], "source": path, **p} for p in sweep["points"])
  for path in _TOP_RULES.value:
    with open(path) as f:
      rules = json.load(f)
    with open(os.path.join(rules["workdir"], "config.json")) as f:
      target = json.load(f)["pruning"]["top_target"]
    for r in rules["rows"]:
      if r["checkpoint"] == "latest" and r["rule"] == "expected":
        result["top"].append({"workdir": rules["workdir"], "method": "top",
                              "accuracy": r["accuracy"],
                              "relative_flops": r["relative_flops"],
                              "tokens_kept_per_layer": r["tokens_kept_per_layer"],
                              "top_target": target, "source": path})
  if _TOPK_SWEEP.value:
    with open(_TOPK_SWEEP.value) as f:
      rows = json.load(f)["rows"]
    result["topk_training_free"] = [
        {k: r[k] for k in ("keep_rate", "accuracy", "relative_flops")}
        for r in rows if r["method"] == "topk"]
  with open(_OUT.value + ".json", "w") as f:
    json.dump(result, f, indent=2)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.2))
  base = result["baseline"]
  ax.axhline(100 * base["accuracy"], color="gray", ls="--", lw=1, label="unpruned")
  ax.axhline(100 * base["accuracy"] - 1, color="gray", ls=":", lw=1, label="unpruned - 1")
  series = [("ltp", "LTP (soft + hard)", "o-", "C0"),
            ("top", "ToP (gates + distillation)", "D-", "C3"),
            ("sdtp", "SDTP (saliency-trained modules)", "v-", "C4"),
            ("topk_finetuned", "top-k (hard fine-tune)", "s", "C1"),
            ("topk_training_free", "top-k (training-free)", "^--", "C2")]
  for key, label, style, color in series:
    points = sorted(result.get(key, []), key=lambda p: p["relative_flops"])
    if points:
      ax.plot([p["relative_flops"] for p in points], [100 * p["accuracy"] for p in points],
              style, color=color, label=label)
  for p in result["ltp"]:
    ax.annotate(f"λ={p['reg_lambda']}", (p["relative_flops"], 100 * p["accuracy"]),
                textcoords="offset points", xytext=(4, -10), fontsize=8)
  for p in result["top"]:
    ax.annotate(f"t={p['top_target']}", (p["relative_flops"], 100 * p["accuracy"]),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
  for p in result.get("sdtp", []):
    ax.annotate(f"r={p['sdtp_keep_ratio']}", (p["relative_flops"], 100 * p["accuracy"]),
                textcoords="offset points", xytext=(4, -10), fontsize=8)
  ax.set_xlabel("relative FLOPs (real lengths)")
  ax.set_ylabel("SST-2 dev accuracy (%)")
  ax.set_title("MiniLM-L6 on SST-2: accuracy vs FLOPs")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(_OUT.value + ".png", dpi=120)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
