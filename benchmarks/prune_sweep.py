"""Training-free top-k or manual thresholds on a task's baseline, chosen on its slice.

Applies the top-k or manual-threshold baseline to a fine-tuned run's weights (no
further training) over a grid of settings, evaluates every setting on the run's
held-out selection slice (the training examples its fine-tune held out), keeps the
best setting within each relative-FLOPs level on the slice, and only then evaluates
dev, once per chosen setting (`tpjax.training.sweep.training_free`). The file records
the slice, every setting's slice metrics ('grid') and the chosen ones' dev metrics
('rows'); curves read the rows.

    python benchmarks/prune_sweep.py --task=sst2 --method=topk \
        --values=0.5,0.3,0.2,0.1,0.05,0.01 --topk_full_layers=1,2,3 \
        --out=benchmarks/results/sst2_topk_sweep.json
"""

import json

from absl import flags

from tpjax import cli
from tpjax.data import glue
from tpjax.results import files as result_files
from tpjax.training import sweep

_TASK = flags.DEFINE_enum("task", "sst2", list(glue.TASKS),
                          "The task; --workdir defaults to its baseline.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A tpjax run with a finetune stage "
                               "(default: the task's baseline, baselines.json).")
_METHOD = flags.DEFINE_enum("method", "topk", ["topk", "threshold"], "Baseline.")
_VALUES = flags.DEFINE_list("values", [], "keep_rate (topk) or final_threshold values.")
_FULL = flags.DEFINE_list("topk_full_layers", ["0"], "topk: unpruned first layers to "
                          "try, each with every value (0: the reference rule).")
_LEVELS = flags.DEFINE_list("flops_levels", [str(v) for v in sweep.DEFAULT_LEVELS],
                            "Relative FLOPs levels: the best setting within each, on "
                            "the slice, is reported on dev.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  entry = result_files.task_baseline(_TASK.value) or {}
  workdir = _WORKDIR.value or entry.get("workdir")
  if not workdir:
    raise ValueError(f"Task {_TASK.value!r} names no baseline; pass --workdir.")
  result = sweep.training_free(workdir, _METHOD.value, [float(v) for v in _VALUES.value],
                               [int(f) for f in _FULL.value],
                               [float(v) for v in _LEVELS.value])
  result["baseline"] = result_files.baseline_record(workdir, _TASK.value)
  print(json.dumps(result["rows"], indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
