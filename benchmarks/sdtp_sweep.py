"""Dev accuracy and FLOPs of one trained SDTP run at several keep ratios.

SDTP's keep ratio is an inference setting: the modules are trained once (backbone
frozen) and location s keeps ceil(r^(s+1) * length) tokens. This evaluates a run's
final modules at each r (masked evaluation, as every training summary; compacted
inference equals it, tests/test_sdtp_encoder.py) and writes the points, with the
prediction modules' own MACs added in `relative_flops_with_predictors`.

    python benchmarks/sdtp_sweep.py --workdir=runs/sst2_sdtp_r0.7 \
        --ratios=0.9,0.8,0.75,0.7,0.6 --out=benchmarks/results/sst2_sdtp_r0.7_ratios.json
"""

import functools
import json
import time

from absl import app
from absl import flags
import numpy as np

from tpjax.training import parallel
from tpjax.training import train
from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import loading
from tpjax.pruning import flops
from tpjax.pruning import registry
from tpjax.pruning import sdtp

_WORKDIR = flags.DEFINE_string("workdir", None, "A tpjax run with an SDTP soft stage.")
_RATIOS = flags.DEFINE_list("ratios", [], "Values of r (sdtp_keep_ratio).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def predictor_overhead(result: dict, lengths: np.ndarray, layers: tuple,
                       model_config) -> float:
  """Prediction-module MACs over the unpruned model's, on the split's real lengths.

  A module at layer l scores every token entering layer l.
  """
  kept = [1.0] + list(result["tokens_kept_per_layer"])  # entering layer l: kept[l]
  scored = sum(kept[l] for l in layers) * lengths.sum()
  full = flops.example_macs(lengths, np.repeat(lengths[:, None],
                                               model_config.num_hidden_layers, 1),
                            model_config).sum()
  return float(scored * sdtp.predictor_flops(model_config.hidden_size) / full)


def main(argv):
  del argv
  run = loading.load_run(_WORKDIR.value, stage="soft")
  config = run.config
  config.data.buckets = batching.normalize_buckets(config.data.buckets,
                                                   config.data.max_length)
  info = glue.TASKS[config.task]
  split = info.eval_splits[0]
  data = batching.load_split(config, run.tokenizer, split, None)
  mesh = parallel.make_mesh(1)
  rows = []
  for r in [float(v) for v in _RATIOS.value]:
    pruning = config.pruning.copy_and_resolve_references()
    pruning.sdtp_keep_ratio = r
    pruning.sdtp_keep_ratios = ()
    method = registry.get_method(pruning, run.model.config)
    p_eval = parallel.data_parallel_eval_step(
        functools.partial(train.eval_step, model=run.model, method=method, stage="hard"),
        mesh)
    start = time.time()
    result = train.evaluate(p_eval, run.params, data, config.task, config, mesh,
                            run.tokenizer.pad_token_id, run.model.config)
    extra = predictor_overhead(result, data.lengths, method.layers, run.model.config)
    row = {"method": "sdtp", "sdtp_keep_ratio": r, "keep_ratios": list(method.ratios),
           "accuracy": result["accuracy"], info.metric: result[info.metric],
           "relative_flops": result["relative_flops"],
           "relative_flops_with_predictors": result["relative_flops"] + extra,
           "tokens_kept_per_layer": result["tokens_kept_per_layer"],
           "tokens_pruned": 1.0 - float(np.mean(result["tokens_kept_per_layer"])),
           "eval_seconds": time.time() - start,
           **{k: v for k, v in result.items() if k.startswith("relative_flops_padded")}}
    print(json.dumps(row))
    rows.append(row)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"workdir": _WORKDIR.value, "task": config.task, "split": split,
                 "points": rows}, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
