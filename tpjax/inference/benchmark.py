"""Is pruned inference really faster? (behind `python -m tpjax.benchmark`)

Measures, in one process on the same dev examples, with timed rounds interleaved
between systems (so machine noise hits all of them alike) and the median reported:
  pruned        the trained method through the compaction engine
  unpruned      the same weights, no pruning, through the same bucketing
  keep_all      the compaction path with a pruning rule that keeps every token
  padded        no pruning, every batch padded to max_length (the references' setting)
  hf_pytorch    Hugging Face PyTorch on the same weights and threads (if installed),
                dynamic padding in dataset order
Throughput at --batch_size (examples/s and real tokens/s) and latency at batch 1
(p50/p99) go to a JSON file under benchmarks/results/.
"""

import os
import platform
import time
from typing import Callable, Optional, Sequence

from absl import logging
import jax
import numpy as np

from tpjax import train
from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import engine as engine_lib
from tpjax.inference import loading
from tpjax.models import hf_weights
from tpjax.pruning import flops as flops_lib
from tpjax.pruning import registry

def _time(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _engine_pass(engine: engine_lib.Engine, batches: list[dict]) -> Callable[[], None]:
  def run():
    for batch in batches:
      engine(batch)
  return run


def _hf_model(run: loading.TrainedRun):
  """The same weights in transformers' PyTorch *ForSequenceClassification."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = run.model.config
  kind = {"bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
          "roberta": (transformers.RobertaConfig,
                      transformers.RobertaForSequenceClassification)}[cfg.model_type]
  hf_config = kind[0](**{k: v for k, v in cfg.to_dict().items() if k != "model_type"},
                      num_labels=run.model.num_labels)
  model = kind[1](hf_config).eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in
           hf_weights.export_state_dict(run.params["model"], cfg.model_type).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("position_ids")]
  if missing or unexpected:
    raise ValueError(f"PyTorch copy does not fit: missing {missing}, unexpected {unexpected}")
  return model


def _hf_batches(data: batching.Encoded, n: int, batch_size: int, pad_id: int):
  """Dataset order, each batch padded to its own longest example (HF's default)."""
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    length = int(data.lengths[idx].max())
    out.append(batching.make_batch(data, idx, len(idx), length, pad_id))
  return out


def _hf_pass(model, batches: list[dict]) -> Callable[[], None]:
  import torch  # pylint: disable=g-import-not-at-top

  tensors = [{k: torch.from_numpy(b[k]).long()
              for k in ("input_ids", "attention_mask", "token_type_ids")} for b in batches]

  def run():
    with torch.inference_mode():
      for t in tensors:
        model(**t)
  return run


def _percentiles(times: list[float]) -> dict[str, float]:
  ms = np.asarray(times) * 1000
  return {"latency_p50_ms": float(np.percentile(ms, 50)),
          "latency_p99_ms": float(np.percentile(ms, 99))}


def benchmark(workdir: str, task: Optional[str], split: Optional[str], batch_size: int,
              rounds: int, latency_examples: int, max_examples: Optional[int],
              systems: list[str], buckets: Optional[Sequence[int]] = None) -> dict:
  """Runs every system; returns the result dict (also what is written as JSON).

  `buckets` overrides the run's bucket lengths for the engines (finer buckets cost
  more compiled segments and let compaction follow the kept counts more closely).
  Engine batches are length-sorted within each bucket, for every engine alike.
  """
  run = loading.load_run(workdir)
  config = run.config
  task = task or config.task
  info = glue.TASKS[task]
  split = split or info.eval_splits[0]
  buckets = batching.normalize_buckets(buckets or config.data.buckets,
                                       config.data.max_length)
  config.task = task
  data = train.load_split(config, run.tokenizer, split, max_examples)
  n = len(data)
  pad = run.tokenizer.pad_token_id
  real_tokens = int(data.lengths.sum())

  keep_all_cfg = config.pruning.copy_and_resolve_references()
  keep_all_cfg.update({"method": "threshold", "final_threshold": -1.0})
  engines = {
      "pruned": engine_lib.Engine(run.model, run.params,
                                  run.method if run.prune_stage == "hard" else None,
                                  buckets),
      "unpruned": engine_lib.Engine(run.model, run.params, None, buckets),
      "keep_all": engine_lib.Engine(run.model, {"model": run.params["model"], "pruning": {}},
                                    registry.get_method(keep_all_cfg, run.model.config),
                                    buckets),
      "padded": engine_lib.Engine(run.model, run.params, None, (config.data.max_length,)),
  }
  engines = {k: v for k, v in engines.items() if k in systems}
  throughput_batches = {
      name: list(batching.eval_batches(data, e.buckets, batch_size, pad,
                                       sort_by_length=True))
      for name, e in engines.items()}
  lat_n = min(latency_examples, n)
  single_batches = {
      name: [batching.make_batch(data, [i], 1, e.bucket_for(int(data.lengths[i])), pad)
             for i in range(lat_n)] for name, e in engines.items()}
  passes = {}
  kept = np.zeros((n, run.model.config.num_hidden_layers), np.int32)
  for name, engine in engines.items():
    # Warm-up: one untimed pass over exactly the batches timed below compiles every
    # segment shape they need (Engine.warm_up would compile all bucket pairs); the
    # pruned engine's pass also records the tokens it keeps, for FLOPs.
    for batch in throughput_batches[name]:
      out = engine(batch)
      if name == "pruned":
        real = batch["index"] >= 0
        kept[batch["index"][real]] = out["kept"][real]
    _engine_pass(engine, single_batches[name])()
    passes[name] = _engine_pass(engine, throughput_batches[name])

  hf_model = None
  if "hf_pytorch" in systems:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(os.cpu_count())
      hf_model = _hf_model(run)
      passes["hf_pytorch"] = _hf_pass(hf_model, _hf_batches(data, n, batch_size, pad))
      passes["hf_pytorch"]()  # warm-up
    except ImportError:
      logging.warning("torch/transformers not installed: skipping hf_pytorch.")

  timings = {name: [] for name in passes}
  for r in range(rounds):
    for name, fn in passes.items():
      timings[name].append(_time(fn))
    logging.info("Round %d: %s", r, {k: round(v[-1], 3) for k, v in timings.items()})

  results = {}
  for name, times in timings.items():
    seconds = float(np.median(times))
    results[name] = {"seconds": seconds, "examples_per_s": n / seconds,
                     "tokens_per_s": real_tokens / seconds,
                     "rounds_s": [round(t, 4) for t in times]}

  # Latency at batch 1 on the first examples, alternating systems per example.
  lat_times = {name: [] for name in passes}
  hf_singles = _hf_batches(data, lat_n, 1, pad)
  for i in range(lat_n):
    for name, engine in engines.items():
      b = single_batches[name][i]
      lat_times[name].append(_time(lambda e=engine, b=b: e(b)))
    if hf_model is not None:
      lat_times["hf_pytorch"].append(_time(_hf_pass(hf_model, [hf_singles[i]])))
  for name, times in lat_times.items():
    results[name].update(_percentiles(times))

  # FLOPs and a correctness check of the PyTorch copy.
  summary = {}
  if "pruned" in engines:
    summary = flops_lib.summarize(data.lengths, kept, run.model.config, task)
  if hf_model is not None and "unpruned" in engines:
    import torch  # pylint: disable=g-import-not-at-top
    b = _hf_batches(data, min(n, 64), 64, pad)[0]
    with torch.inference_mode():
      theirs = hf_model(**{k: torch.from_numpy(b[k]).long() for k in
                           ("input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
    ours = engines["unpruned"](b)["logits"]
    summary["hf_max_abs_logit_diff"] = float(np.abs(theirs - ours).max())

  ratios = {}
  if "pruned" in results and "unpruned" in results:
    speedup = results["unpruned"]["seconds"] / results["pruned"]["seconds"]
    reduction = 1.0 / summary["relative_flops"]
    ratios.update({"speedup_pruned_vs_unpruned": speedup, "flops_reduction": reduction,
                   "speedup_over_flops_reduction": speedup / reduction})
  if "keep_all" in results and "unpruned" in results:
    ratios["keep_all_overhead"] = (results["keep_all"]["seconds"] /
                                   results["unpruned"]["seconds"] - 1.0)
  if "hf_pytorch" in results:
    for name in ("pruned", "unpruned"):
      if name in results:
        ratios[f"{name}_vs_hf_pytorch"] = (results["hf_pytorch"]["seconds"] /
                                           results[name]["seconds"])
  return {
      "workdir": workdir, "task": task, "split": split, "examples": n,
      "real_tokens": real_tokens, "batch_size": batch_size, "rounds": rounds,
      "latency_examples": lat_n, "method": run.method.name, "stage": run.stage,
      "buckets": list(buckets), "device": jax.devices()[0].device_kind,
      "jax_devices": jax.device_count(), "cpu_count": os.cpu_count(),
      "platform": platform.platform(), "systems": results, "ratios": ratios,
      "pruning": summary,
  }
