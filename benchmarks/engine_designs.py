"""Small engine design comparisons behind docs/engine.md (issue 12).

    python benchmarks/engine_designs.py --workdir=runs/sst2_ltp_tpjax_lam0.05

On a few SST-2 dev batches (batch 32, length-sorted, from three points of the length
range) and single examples, best of `--repeats` calls each, alternating systems:
  plain      `model.apply` jitted on the padded batch (no pruning, no packing)
  keep_all   the packed engine with a rule that keeps every token (the engine's
             unpruned path is `plain`)
  chunk=C    the pruned engine with packed chunks of C tokens
  decide_after_dense  the pruned engine deciding after the attention output dense
             (two packed passes per layer, as for methods that read `hidden`)
Prints one line per input and writes JSON with `--out`.
"""

import copy
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from tpjax.data import batching
from tpjax.inference import benchmark
from tpjax.inference import engine as engine_lib
from tpjax.inference import loading

_WORKDIR = flags.DEFINE_string("workdir", "runs/sst2_ltp_tpjax_lam0.05", "A trained run.")
_CHUNKS = flags.DEFINE_list("chunks", ["256"], "Chunk sizes to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Calls per input and system (best kept).")
_OUT = flags.DEFINE_string("out", None, "JSON path.")


def main(argv):
  del argv
  run = loading.load_run(_WORKDIR.value)
  config = run.config
  data = batching.load_split(config, run.tokenizer, "validation", None)
  lengths = data.lengths
  buckets = engine_lib.inference_buckets(config.data.max_length)
  order = np.argsort(lengths, kind="stable")
  inputs = {}
  for start in (288, 576, 800):
    idx = order[start:start + 32]
    inputs[f"batch 32, {int(lengths[idx].sum())} tokens"] = benchmark.padded_batch(
        data, idx, 32, engine_lib.input_bucket(buckets, lengths[idx].max()), 0)
  for i in [i for i in range(60) if 24 < lengths[i] <= 32][:3]:
    inputs[f"batch 1, {lengths[i]} tokens"] = benchmark.padded_batch(data, [i], 1, 32, 0)

  plain_fn = jax.jit(lambda p, i, m, t: run.model.apply({"params": p}, i, m, t).logits)
  systems = {
      "plain": lambda b: np.asarray(plain_fn(run.params["model"], b["input_ids"],
                                             b["attention_mask"], b["token_type_ids"])),
      "keep_all": benchmark.keep_all_engine(run, buckets),
  }
  after_dense = copy.copy(run.method)
  after_dense.keep_reads_hidden = True
  systems["decide_after_dense"] = engine_lib.Engine(run.model, run.params, after_dense,
                                                    buckets)
  for chunk in _CHUNKS.value:
    systems[f"chunk={chunk}"] = engine_lib.Engine(run.model, run.params, run.method,
                                                  buckets, chunk=int(chunk))
  results = {}
  for label, batch in inputs.items():
    for fn in systems.values():
      fn(batch)  # compile
    best = {name: [] for name in systems}
    for _ in range(_REPEATS.value):
      for name, fn in systems.items():
        start = time.perf_counter()
        fn(batch)
        best[name].append(time.perf_counter() - start)
    results[label] = {name: round(min(t) * 1000, 2) for name, t in best.items()}
    print(label, results[label], flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"workdir": _WORKDIR.value, "best_ms": results}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
