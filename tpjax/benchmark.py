"""`python -m tpjax.benchmark --workdir=DIR`: pruned vs unpruned vs peers, one run.

See tpjax/inference/benchmark.py for what is measured and how (paired rounds, peers in
their own processes, the same batches for every system).
"""

import json
import os

from absl import flags

from tpjax import cli
from tpjax.inference import benchmark

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained tpjax run.")
_TASK = flags.DEFINE_string("task", None, "GLUE task (default: the run's task).")
_SPLIT = flags.DEFINE_string("split", None, "Split (default: the task's first dev split).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Throughput batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Paired timed rounds (every system each).")
_LATENCY_N = flags.DEFINE_integer("latency_examples", 100,
                                  "Dev examples timed one at a time in every round.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Cap on examples (smoke runs).")
_SYSTEMS = flags.DEFINE_list("systems", list(benchmark.SYSTEMS), "Systems to measure: "
                             + ", ".join(benchmark.SYSTEMS) + ".")
_ORDERS = flags.DEFINE_list("orders", ["sorted"], "Batch orders: sorted (by length) "
                            "and/or dataset.")
_BUCKETS = flags.DEFINE_list("buckets", None, "Engine input bucket lengths (default: "
                             "engine.inference_buckets of the run's max_length).")
_THREADS = flags.DEFINE_integer("threads", None, "Peer intra-op threads (default: every "
                                "core, as JAX uses).")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/...).")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments {argv[1:]}; every option is a --flag.")
  try:
    buckets = [int(b) for b in _BUCKETS.value or []]
  except ValueError as err:
    raise ValueError(f"--buckets must be integers ({err}).") from None
  # Checked before anything is loaded or written.
  benchmark.validate(_WORKDIR.value, _SYSTEMS.value, _ROUNDS.value, _BATCH.value,
                     _LATENCY_N.value, _ORDERS.value)

  def out_path(result: dict) -> str:  # the default names the task, known after loading
    run = os.path.basename(os.path.normpath(_WORKDIR.value))
    return _OUT.value or os.path.join("benchmarks", "results",
                                      f"inference_{result['task']}_{run}.json")

  def write(result: dict) -> None:  # after every round: a cut run keeps its rounds
    out = out_path(result)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
      json.dump(result, f, indent=2)
    os.replace(out + ".tmp", out)

  result = benchmark.benchmark(_WORKDIR.value, _TASK.value, _SPLIT.value, _BATCH.value,
                               _ROUNDS.value, _LATENCY_N.value, _MAX_EXAMPLES.value,
                               _SYSTEMS.value, buckets, _ORDERS.value, _THREADS.value,
                               on_round=write)
  for name, r in result["systems"].items():
    first = r[result["orders"][0]]
    lat = (f"  p50 {r['latency_p50_ms']:.2f} ms  p99 {r['latency_p99_ms']:.2f} ms"
           if "latency_p50_ms" in r else "")
    print(f"{name:>12}: {first['examples_per_s']:8.1f} ex/s{lat}")
  print(json.dumps(result["ratios"], indent=2))
  print(f"relative FLOPs {result['pruning'].get('relative_flops')}; "
        f"written to {out_path(result)}")


if __name__ == "__main__":
  cli.run(main, "tpjax.benchmark")
