"""Dev accuracy and FLOPs of a ToP run under both inference rules.

Evaluates the soft stage's final ('latest') state and its 'best' checkpoint with
`top_inference='expected'` and `'reference'` (tpjax/pruning/top.py, `closed_bins`),
on the same trained weights and gates.

    python benchmarks/top_rules.py --workdir=runs/sst2_top_t0.5 \
        --out=benchmarks/results/sst2_top_t0.5_rules.json
"""

import functools
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from tpjax.training import checkpoints
from tpjax.training import parallel
from tpjax.training import train
from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import loading
from tpjax.pruning import registry
from tpjax.pruning import top

_WORKDIR = flags.DEFINE_string("workdir", None, "A ToP run.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  run = loading.load_run(_WORKDIR.value, stage="soft")
  config = run.config
  config.data.buckets = batching.normalize_buckets(config.data.buckets,
                                                   config.data.max_length)
  data = batching.load_split(config, run.tokenizer, glue.TASKS[config.task].eval_splits[0],
                          None)
  mesh = parallel.make_mesh(1)
  rows = []
  for which in ("latest", "best"):
    ckpts = checkpoints.StageCheckpoints(os.path.join(_WORKDIR.value, "soft"))
    manager = ckpts.latest if which == "latest" else ckpts.best
    step = manager.latest_step()
    raw = manager.restore(step)["params"]
    ckpts.close()
    params = {"model": checkpoints.cast_like(run.params["model"], raw["model"]),
              "pruning": jax.tree.map(jnp.asarray, raw["pruning"])}
    for rule in top.INFERENCE_RULES:
      config.pruning.top_inference = rule
      method = registry.get_method(config.pruning, run.model.config)
      p_eval = parallel.data_parallel_eval_step(
          functools.partial(train.eval_step, model=run.model, method=method, stage="hard"),
          mesh)
      result = train.evaluate(p_eval, params, data, config.task, config, mesh,
                              run.tokenizer.pad_token_id, run.model.config)
      result.update({"checkpoint": which, "step": int(step), "rule": rule,
                     **method.metrics(params["pruning"])})
      print(json.dumps(result))
      rows.append(result)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"workdir": _WORKDIR.value, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
