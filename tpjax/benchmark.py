"""`python -m tpjax.benchmark --workdir=DIR`: pruned vs unpruned vs PyTorch, one run.

See tpjax/inference/benchmark.py for what is measured and how.
"""

import json
import os

from absl import app
from absl import flags

from tpjax.inference import benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained tpjax run.")
_TASK = flags.DEFINE_string("task", None, "GLUE task (default: the run's task).")
_SPLIT = flags.DEFINE_string("split", None, "Split (default: the task's first dev split).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Throughput batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds per system (median kept).")
_LATENCY_N = flags.DEFINE_integer("latency_examples", 200, "Examples timed at batch 1.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Cap on examples (smoke runs).")
_SYSTEMS = flags.DEFINE_list("systems", ["pruned", "unpruned", "keep_all", "padded",
                                         "hf_pytorch"], "Systems to measure.")
_BUCKETS = flags.DEFINE_list("buckets", None, "Engine bucket lengths (default: the "
                             "run's config.data.buckets).")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/...).")


def main(argv):
  del argv
  result = benchmark.benchmark(_WORKDIR.value, _TASK.value, _SPLIT.value, _BATCH.value,
                     _ROUNDS.value, _LATENCY_N.value, _MAX_EXAMPLES.value, _SYSTEMS.value,
                               [int(b) for b in _BUCKETS.value or []])
  out = _OUT.value or os.path.join(
      "benchmarks", "results",
      f"inference_{result['task']}_{os.path.basename(os.path.normpath(_WORKDIR.value))}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  for name, r in result["systems"].items():
    print(f"{name:>11}: {r['examples_per_s']:8.1f} ex/s  {r['tokens_per_s']:9.0f} tok/s  "
          f"p50 {r['latency_p50_ms']:.2f} ms  p99 {r['latency_p99_ms']:.2f} ms")
  print(json.dumps(result["ratios"], indent=2))
  print(f"relative FLOPs {result['pruning'].get('relative_flops')}; written to {out}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
