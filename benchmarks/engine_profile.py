"""Where the engine's time goes: XLA:CPU operations of one batch, summed by kind.

    python benchmarks/engine_profile.py --workdir=runs/sst2_ltp_tpjax_lam0.05 \
        --batch_size=32 --systems=pruned,unpruned

Runs one length-sorted SST-2 dev batch (from two thirds up the length range) through
each system under `jax.profiler`, then sums the durations of the compiled program's
operations (thunks) per call, grouped by name with the numeric suffix dropped:
`ynn_fusion` are the matmuls (XLA's YNNPACK fusions), the rest is elementwise work,
gathers, copies, loop and switch control. Profiling slows every operation, so compare
shares, not absolute times, with the benchmark's.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

from tpjax.data import batching
from tpjax.inference import benchmark
from tpjax.inference import engine as engine_lib
from tpjax.inference import loading

_WORKDIR = flags.DEFINE_string("workdir", "runs/sst2_ltp_tpjax_lam0.05", "A trained run.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples in the batch.")
_SYSTEMS = flags.DEFINE_list("systems", ["pruned", "unpruned"], "pruned, unpruned, keep_all.")
_CALLS = flags.DEFINE_integer("calls", 5, "Profiled calls (after 3 warm-up calls).")
_TOP = flags.DEFINE_integer("top", 12, "Operation kinds printed per system.")
# Events that enclose others (the executable, loops, host-side Python) or wait.
_ENCLOSING = re.compile(r"^(\$|ThunkExecutor|while|Pjit|np\.|Slinky|cond(\.\d+)*(\.clone)?$)")


def op_kinds(trace_dir: str, calls: int) -> dict[str, float]:
  """Milliseconds per call by operation kind, from the Perfetto trace in trace_dir."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  kinds = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and not _ENCLOSING.match(event["name"]):
      kinds[re.sub(r"[.\d]+$", "", event["name"])] += event["dur"] / 1000 / calls
  return dict(kinds)


def main(argv):
  del argv
  run = loading.load_run(_WORKDIR.value)
  data = batching.load_split(run.config, run.tokenizer, "validation", None)
  buckets = engine_lib.inference_buckets(run.config.data.max_length)
  order = np.argsort(data.lengths, kind="stable")
  idx = order[2 * len(order) // 3:][:_BATCH.value]
  batch = benchmark.padded_batch(data, idx, _BATCH.value,
                                 engine_lib.input_bucket(buckets, data.lengths[idx].max()), 0)
  engines = {"pruned": lambda: engine_lib.Engine(run.model, run.params, run.method, buckets),
             "unpruned": lambda: engine_lib.Engine(run.model, run.params, None, buckets),
             "keep_all": lambda: benchmark.keep_all_engine(run, buckets)}
  print(f"batch of {_BATCH.value}, {int(data.lengths[idx].sum())} real tokens, "
        f"input width {batch['input_ids'].shape[1]}")
  for name in _SYSTEMS.value:
    engine = engines[name]()
    for _ in range(3):
      engine(batch)
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
      for _ in range(_CALLS.value):
        engine(batch)
      jax.profiler.stop_trace()
      kinds = op_kinds(trace_dir, _CALLS.value)
    total = sum(kinds.values())
    matmul = sum(v for k, v in kinds.items() if k.startswith("ynn_fusion") or k == "dot")
    print(f"{name}: {total:.1f} ms of operations per call, matmuls {matmul:.1f} ms "
          f"({100 * matmul / total:.0f}%)")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1])[:_TOP.value]:
      print(f"  {ms:8.2f} ms  {kind}")


if __name__ == "__main__":
  app.run(main)
