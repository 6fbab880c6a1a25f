"""Dev accuracy and relative FLOPs of a fine-tuned run under training-free pruning.

Applies the manual-threshold or top-k baseline to a run's fine-tuned weights (no
further training) over a grid of settings, for choosing LTP's threshold scale and for
top-k points on the accuracy-versus-FLOPs curve.

    python benchmarks/prune_sweep.py --workdir=runs/sst2 --method=topk \
        --values=0.9,0.7,0.5,0.3 --out=benchmarks/results/sst2_topk_sweep.json
"""

import functools
import json

from absl import app
from absl import flags

from tpjax.training import parallel
from tpjax.training import train
from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import loading

_WORKDIR = flags.DEFINE_string("workdir", None, "A tpjax run with a finetune stage.")
_METHOD = flags.DEFINE_enum("method", "topk", ["topk", "threshold"], "Baseline.")
_VALUES = flags.DEFINE_list("values", [], "keep_rate (topk) or final_threshold values.")
_FULL = flags.DEFINE_integer("topk_full_layers", 0, "topk: unpruned first layers "
                              "(0: the reference rule).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  key = "keep_rate" if _METHOD.value == "topk" else "final_threshold"
  mesh = parallel.make_mesh(1)
  rows = []
  for value in [None] + [float(v) for v in _VALUES.value]:
    overrides = {"method": "none"} if value is None else {
        "method": _METHOD.value, key: value, "topk_full_layers": _FULL.value}
    run = loading.load_run(_WORKDIR.value, stage="finetune", pruning_overrides=overrides)
    config = run.config
    config.data.buckets = batching.normalize_buckets(config.data.buckets,
                                                     config.data.max_length)
    info = glue.TASKS[config.task]
    data = batching.load_split(config, run.tokenizer, info.eval_splits[0], None)
    p_eval = parallel.data_parallel_eval_step(
        functools.partial(train.eval_step, model=run.model, method=run.method,
                          stage=run.prune_stage), mesh)
    result = train.evaluate(p_eval, run.params, data, config.task, config, mesh,
                            run.tokenizer.pad_token_id, run.model.config)
    result.update({"method": overrides["method"], key: value,
                   "topk_full_layers": _FULL.value})
    print(json.dumps(result))
    rows.append(result)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"workdir": _WORKDIR.value, "method": _METHOD.value, "rows": rows}, f,
                indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
