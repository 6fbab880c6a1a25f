"""Is pruned inference really faster, and than what? (behind `python -m tpjax.benchmark`)

Systems, all on the same weights and the same batches:
  pruned       the trained method through the packed engine (tpjax.inference.engine)
  unpruned     the engine without a method: the plain padded forward
  keep_all     the engine with a pruning rule that keeps every token (its overhead)
  pruned_bf16, unpruned_bf16   the same two with bfloat16 dot operands (float32
               accumulation, tpjax/models/precision.py); the three above are float32
  hf_pytorch, hf_pytorch_bf16, onnxruntime, onnxruntime_int8   peers, each in its own
               process, at the precision its name says (tpjax/inference/peers.py)
Every system's accuracy on the benchmarked split is recorded beside its speed (a peer
that loses accuracy at low precision is not a free win), and the bf16 engine's keep
decisions are compared with the float32 engine's on every real token and layer.

Fairness rules (issue 12):
  * Same batches: the same examples in the same order, for every system. `sorted`:
    length-sorted then cut into batches; `dataset`: dataset order. Every system gets
    each batch padded to its longest example (tpjax's engine then pads it to the
    smallest of its input buckets that holds it, `engine.inference_buckets` unless
    --buckets, and its rows to `engine.padded_rows`: padding its packing removes from
    the dense work).
  * Paired rounds: in every round each system runs every batch once, one system at a
    time (peers wait on a pipe while tpjax is timed, and the reverse); the order of
    systems flips every round. Ratios are computed per round and reported as median
    and interquartile range over the rounds.
  * Same thread count: JAX uses every core of the machine; the peers are given the
    same number of intra-op threads.
Batch-1 latency runs the first `latency_examples` dev examples one at a time, inside
each round too, and pools the per-example times over rounds for p50/p99.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

from absl import logging
import jax
import numpy as np
import tqdm

from tpjax.data import batching
from tpjax.data import glue
from tpjax.inference import engine as engine_lib
from tpjax.inference import loading
from tpjax.inference import peers as peers_lib
from tpjax.data import metrics as metrics_lib
from tpjax.models import hf_weights
from tpjax.models import precision
from tpjax.pruning import flops as flops_lib
from tpjax.pruning import registry

TPJAX_SYSTEMS = ("pruned", "unpruned", "keep_all", "pruned_bf16", "unpruned_bf16")
PEER_SYSTEMS = tuple(peers_lib.PRECISIONS)
SYSTEMS = TPJAX_SYSTEMS + PEER_SYSTEMS
ORDERS = ("sorted", "dataset")
# Python packages each peer process imports.
PEER_MODULES = {"hf_pytorch": ("torch", "transformers"),
                "hf_pytorch_bf16": ("torch", "transformers"),
                "onnxruntime": ("torch", "transformers", "onnx", "onnxruntime"),
                "onnxruntime_int8": ("torch", "transformers", "onnx", "onnxruntime")}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Seconds of quiet between systems: lets the previous system's worker threads stop
# spinning before the next one is timed.
SETTLE_S = 0.2


def validate(workdir: Optional[str], systems: Sequence[str], rounds: int,
             batch_size: int, latency_examples: int, orders: Sequence[str]) -> None:
  """Raises ValueError, in one sentence, for flags that cannot make a benchmark."""
  if not workdir or not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir!r} is not a directory; give a trained tpjax run.")
  unknown = [s for s in systems if s not in SYSTEMS]
  if unknown or not systems:
    raise ValueError(f"Unknown or no systems {unknown or list(systems)}; choose from "
                     f"{', '.join(SYSTEMS)}.")
  for system in systems:
    missing = [m for m in PEER_MODULES.get(system, ()) if importlib.util.find_spec(m) is None]
    if missing:
      raise ValueError(f"System {system} needs {', '.join(missing)}: pip install "
                       f"{' '.join(missing)}, or leave it out of --systems.")
  if rounds < 1:
    raise ValueError(f"--rounds must be at least 1 (got {rounds}).")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1 (got {batch_size}).")
  if latency_examples < 0:
    raise ValueError(f"--latency_examples must be 0 or more (got {latency_examples}).")
  bad = [o for o in orders if o not in ORDERS]
  if bad or not orders:
    raise ValueError(f"Unknown or no batch orders {bad or list(orders)}; choose from "
                     f"{', '.join(ORDERS)}.")


def batch_indices(lengths: np.ndarray, batch_size: int, order: str) -> list[np.ndarray]:
  """Example indices of each batch: length-sorted (stable) or dataset order."""
  index = (np.argsort(lengths, kind="stable") if order == "sorted"
           else np.arange(len(lengths)))
  return [index[i:i + batch_size] for i in range(0, len(index), batch_size)]


def padded_batch(data: batching.Encoded, idx: np.ndarray, rows: int, length: int,
                 pad_id: int) -> dict[str, np.ndarray]:
  """The examples `idx` padded to [rows, length] (extra rows empty)."""
  batch = batching.make_batch(data, idx, rows, length, pad_id)
  return {k: batch[k] for k in INPUTS + ("index",)}


class Peer:
  """One peer system in its own process, driven over a pipe (tpjax.inference.peers)."""

  def __init__(self, system: str, model_dir: str, batches_path: str, threads: int):
    self.system = system
    cmd = [sys.executable, "-m", "tpjax.inference.peers", f"--system={system}",
           f"--model_dir={model_dir}", f"--batches={batches_path}", f"--threads={threads}"]
    self.log = open(os.path.join(model_dir, f"{system}.log"), "w")
    # Passive OpenMP waits (as in benchmarks/decoder_speed.py): a spinning worker
    # thread on a shared machine would cost the peer far more than it costs tpjax.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, env=env)
    self.ask_ready()

  def ask_ready(self) -> None:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      with open(self.log.name) as f:
        tail = f.read()[-2000:]
      raise RuntimeError(f"{self.system} peer failed to start:\n{tail}")

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.system} peer exited; see {self.log.name}")
    return json.loads(line)

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=60)
    self.log.close()


def _hf_config(run: loading.TrainedRun):
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = run.model.config
  kind = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}
  return kind[cfg.model_type](
      **{k: v for k, v in cfg.to_dict().items() if k != "model_type"},
      num_labels=run.model.num_labels)


def write_hf_model(run: loading.TrainedRun, folder: str) -> None:
  """The run's weights as a Hugging Face *ForSequenceClassification folder."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config = _hf_config(run)
  cls = {"bert": transformers.BertForSequenceClassification,
         "roberta": transformers.RobertaForSequenceClassification}[config.model_type]
  model = cls(config).eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in
           hf_weights.export_state_dict(run.params["model"], config.model_type).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("position_ids")]
  if missing or unexpected:
    raise ValueError(f"PyTorch copy does not fit: missing {missing}, unexpected {unexpected}")
  model.save_pretrained(folder)


def keep_all_engine(run: loading.TrainedRun, buckets: Sequence[int]) -> engine_lib.Engine:
  """The packed engine with a rule that keeps every token: its machinery's cost."""
  config = run.config.pruning.copy_and_resolve_references()
  config.update({"method": "threshold", "final_threshold": -1.0})
  model = precision.with_dtype(run.model, "float32")
  return engine_lib.Engine(model, {"model": run.params["model"], "pruning": {}},
                           registry.get_method(config, model.config), buckets)


def keep_agreement(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> float:
  """Fraction of (real token, layer) pairs where two engines' keep decisions agree.

  Args:
    a, b: <bool>[layers, examples, seq] kept positions.
    lengths: <int>[examples] real tokens.
  """
  real = np.arange(a.shape[-1])[None, :] < lengths[:, None]
  return float(np.mean((a == b)[:, real]))


def best_unpruned_ratios(seconds: dict, reduction: float) -> dict:
  """Pruned against the faster unpruned path of each round: the plain padded forward
  or the packed one (`keep_all`), which wins where input buckets are coarse.

  Args:
    seconds: per system, the per-round times (pruned, unpruned, keep_all).
    reduction: the FLOPs reduction (1 / relative FLOPs).
  """
  best = np.minimum(seconds["unpruned"], seconds["keep_all"])
  speedup = _paired(best, seconds["pruned"])
  return {"speedup_pruned_vs_best_unpruned": speedup,
          "speedup_over_flops_reduction_best_unpruned": {
              k: v / reduction for k, v in speedup.items()}}


def _paired(numerator: list[float], denominator: list[float]) -> dict[str, float]:
  """Median and interquartile range of per-round ratios numerator / denominator."""
  r = np.asarray(numerator) / np.asarray(denominator)
  return {"median": float(np.median(r)), "q25": float(np.percentile(r, 25)),
          "q75": float(np.percentile(r, 75)), "min": float(r.min()), "max": float(r.max())}


def _time(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def benchmark(workdir: str, task: Optional[str], split: Optional[str], batch_size: int,
              rounds: int, latency_examples: int, max_examples: Optional[int],
              systems: Sequence[str], buckets: Optional[Sequence[int]] = None,
              orders: Sequence[str] = ("sorted",), threads: Optional[int] = None,
              progress: bool = True,
              on_round: Optional[Callable[[dict], None]] = None) -> dict:
  """Runs every system in paired rounds; returns the result dict (written as JSON).

  `on_round` gets the result of the rounds done so far after every round (so an
  interrupted benchmark leaves its finished rounds on disk).
  """
  validate(workdir, systems, rounds, batch_size, latency_examples, orders)
  load_start = os.getloadavg()
  threads = threads or os.cpu_count()
  run = loading.load_run(workdir)
  config = run.config
  task = task or config.task
  if task not in glue.TASKS:
    raise ValueError(f"Unknown task {task!r}; choose from {', '.join(glue.TASKS)}.")
  split = split or glue.TASKS[task].eval_splits[0]
  buckets = batching.normalize_buckets(
      buckets or engine_lib.inference_buckets(config.data.max_length), config.data.max_length)
  config.task = task
  data = batching.load_split(config, run.tokenizer, split, max_examples)
  n, pad = len(data), run.tokenizer.pad_token_id
  lengths = data.lengths
  real_tokens = int(lengths.sum())

  # ---------------------------------------------------------------- the systems
  method = run.method if run.prune_stage == "hard" else None
  at = lambda dtype: precision.with_dtype(run.model, dtype)
  makers = {
      "pruned": lambda: engine_lib.Engine(at("float32"), run.params, method, buckets),
      "unpruned": lambda: engine_lib.Engine(at("float32"), run.params, None, buckets),
      "keep_all": lambda: keep_all_engine(run, buckets),
      "pruned_bf16": lambda: engine_lib.Engine(at("bfloat16"), run.params, method,
                                               buckets),
      "unpruned_bf16": lambda: engine_lib.Engine(at("bfloat16"), run.params, None,
                                                 buckets),
  }
  engines = {k: makers[k]() for k in TPJAX_SYSTEMS if k in systems}

  # ----------------------------------------------------------------- batches
  lat_n = min(latency_examples, n)
  groups = {order: batch_indices(lengths, batch_size, order) for order in orders}
  # Every system gets these; tpjax's engine pads each to its input grid itself.
  batches = {order: [padded_batch(data, idx, len(idx), int(lengths[idx].max()), pad)
                     for idx in g] for order, g in groups.items()}
  single = [padded_batch(data, [i], 1, int(lengths[i]), pad) for i in range(lat_n)]

  # ------------------------------------------------- warm-up (compiles), FLOPs
  layers = run.model.config.num_hidden_layers
  kept = np.zeros((n, layers), np.int32)
  compile_info, logits, positions = {}, {}, {}
  for name, engine in engines.items():
    start = time.perf_counter()
    logits[name] = np.zeros((n, run.model.num_labels), np.float32)
    # Keep decisions are compared between the float32 and bf16 pruned engines only.
    with_positions = name in ("pruned", "pruned_bf16")
    if with_positions:
      positions[name] = np.zeros((layers, n, int(lengths.max())), bool)
    for order in orders:
      first = order == orders[0]
      for batch in batches[order]:
        out = engine(batch, return_kept_positions=with_positions and first)
        if first:
          logits[name][batch["index"]] = out["logits"]
        if with_positions and first:
          positions[name][:, batch["index"], :out["kept_positions"].shape[-1]] = (
              out["kept_positions"])
          engine(batch)  # compiles the timed function (no positions) too
        if name == "pruned":
          kept[batch["index"]] = out["kept"]
    for batch in single:
      engine(batch)
    compile_info[name] = {
        "compiled_functions": engine.compiled_functions,
        "warm_up_seconds": round(time.perf_counter() - start, 2),
        "compile_seconds_total": round(sum(engine.compile_seconds.values()), 2)}
  logging.info("Warm-up: %s", compile_info)

  peers, folder = {}, None
  wanted_peers = [s for s in PEER_SYSTEMS if s in systems]
  if wanted_peers:
    folder = tempfile.mkdtemp(prefix="tpjax_peers_")
    write_hf_model(run, folder)
    path = os.path.join(folder, "batches.npz")
    np.savez(path, **{f"{order}/{i}/{k}": b[k]
                      for order, bs in {**batches, "latency": single}.items()
                      for i, b in enumerate(bs) for k in INPUTS})
    for name in wanted_peers:
      peers[name] = Peer(name, folder, path, threads)  # one at a time: each warms up

  # Every system's quality on the whole split, from the same batches.
  for name, peer in peers.items():
    logits[name] = np.zeros((n, run.model.num_labels), np.float32)
    for idx, out in zip(groups[orders[0]],
                        peer.ask(cmd="all_logits", order=orders[0])["logits"]):
      logits[name][idx] = np.asarray(out)[:len(idx)]
  labels = np.asarray(data.labels)
  quality = {name: metrics_lib.glue_metrics(
      task, metrics_lib.predictions_from_logits(x, run.model.num_labels), labels)
             for name, x in logits.items()}
  precisions = {**{k: "bfloat16" if k.endswith("_bf16") else "float32"
                   for k in engines}, **{k: peers_lib.PRECISIONS[k] for k in peers}}
  if "pruned" in engines and "pruned_bf16" in engines:
    quality["keep_decisions_bf16_equal_float32"] = keep_agreement(
        positions["pruned"], positions["pruned_bf16"], lengths)
  logging.info("Quality: %s", quality)

  # Logits of every system on the first sorted batch agree with tpjax unpruned.
  agreement = {}
  ref_engine = engines.get("unpruned") or next(iter(engines.values()), None)
  if ref_engine is not None:
    order = orders[0]
    first = batches[order][0]
    ref = ref_engine(first)["logits"]
    for name, peer in peers.items():
      theirs = np.asarray(peer.ask(cmd="logits", order=order, batch=0)["logits"])
      agreement[f"{name}_max_abs_logit_diff_vs_unpruned"] = float(np.abs(theirs - ref).max())
    for name, engine in engines.items():
      agreement[f"{name}_max_abs_logit_diff_vs_unpruned"] = float(
          np.abs(engine(first)["logits"] - ref).max())

  # --------------------------------------------------------------- timed rounds
  def tpjax_pass(engine, work):
    for batch in work:
      engine(batch)

  def tpjax_latency(engine):
    times = []
    for batch in single:
      times.append(_time(lambda: engine(batch)))
    return times

  names = list(engines) + list(peers)
  seconds = {order: {s: [] for s in names} for order in orders}
  latency = {s: [] for s in names}

  # --------------------------------------------------------------- results
  # What does not change between rounds (the keep decisions are final after warm-up).
  summary = (flops_lib.summarize(lengths, kept, run.model.config, task)
             if "pruned" in engines else {})
  reduction = 1.0 / summary["relative_flops"] if summary else None
  # Installed versions, read without importing the peers' libraries into this process.
  versions = {"jax": jax.__version__, "python": platform.python_version()}
  for module in ("torch", "transformers", "onnxruntime") if peers else ():
    try:
      versions[module] = importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
      pass
  fixed = {
      "workdir": workdir, "task": task, "split": split, "examples": n,
      "real_tokens": real_tokens, "batch_size": batch_size, "rounds_planned": rounds,
      "orders": list(orders), "latency_examples": lat_n, "method": run.method.name,
      "stage": run.stage, "buckets": list(buckets), "threads": threads,
      "peer_env": {"OMP_WAIT_POLICY": "PASSIVE"},
      "padding": {
          "given": "every system gets each batch padded to its own longest example",
          "tpjax": "the engine pads each batch to the smallest input bucket holding "
                   "its longest example and its rows to 1, 2, 4 or a multiple of 8 "
                   "(engine.padded_rows); packing keeps padding out of the dense work",
          "padded_tokens_given": {o: int(sum(len(i) * lengths[i].max() for i in g))
                                  for o, g in groups.items()},
          "padded_tokens_tpjax": {o: int(sum(
              np.prod(engine_lib.padded_shape(buckets, len(i), lengths[i].max()))
              for i in g)) for o, g in groups.items()}},
      "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "platform": platform.platform(), "versions": versions,
      "compile": compile_info, "agreement": agreement, "pruning": summary,
      "precision": precisions, "quality": quality}

  def collect() -> dict:
    """The result of the rounds done so far."""
    results = {}
    for name in names:
      first = seconds[orders[0]][name]
      # Top level: the first order's numbers (what tpjax.report tables and plots read).
      entry = {"examples_per_s": n / float(np.median(first)),
               "tokens_per_s": real_tokens / float(np.median(first))}
      for order in orders:
        t = seconds[order][name]
        entry[order] = {"seconds_median": float(np.median(t)),
                        "examples_per_s": n / float(np.median(t)),
                        "tokens_per_s": real_tokens / float(np.median(t)),
                        "rounds_s": [round(x, 4) for x in t]}
      if lat_n:
        ms = np.asarray(latency[name]) * 1000  # [rounds, examples]
        entry["latency_p50_ms"] = float(np.percentile(ms, 50))
        entry["latency_p99_ms"] = float(np.percentile(ms, 99))
        entry["latency_round_p50_ms"] = [round(float(np.median(x)), 3) for x in ms]
        entry["latency_round_p99_ms"] = [round(float(np.percentile(x, 99)), 3) for x in ms]
      results[name] = entry

    ratios = {}
    for order in orders:
      s = seconds[order]
      r = {}
      if "pruned" in s and "unpruned" in s:
        r["speedup_pruned_vs_unpruned"] = _paired(s["unpruned"], s["pruned"])
        r["flops_reduction"] = reduction
        r["speedup_over_flops_reduction"] = {
            k: v / reduction for k, v in r["speedup_pruned_vs_unpruned"].items()}
      if "keep_all" in s and "unpruned" in s:
        r["keep_all_time_over_unpruned"] = _paired(s["keep_all"], s["unpruned"])
        if "pruned" in s:
          r.update(best_unpruned_ratios(s, reduction))
      if "pruned_bf16" in s and "unpruned_bf16" in s:
        r["speedup_pruned_bf16_vs_unpruned_bf16"] = _paired(s["unpruned_bf16"],
                                                            s["pruned_bf16"])
      if "unpruned_bf16" in s and "unpruned" in s:
        r["speedup_unpruned_bf16_vs_unpruned"] = _paired(s["unpruned"],
                                                         s["unpruned_bf16"])
      for peer in peers:
        for name in ("pruned", "unpruned", "pruned_bf16", "unpruned_bf16"):
          if name in s:
            r[f"{name}_speedup_vs_{peer}"] = _paired(s[peer], s[name])
      ratios[order] = r
    if lat_n:
      lat = {}
      for name in names:
        lat[name] = {"p50_ms": results[name]["latency_p50_ms"],
                     "p99_ms": results[name]["latency_p99_ms"]}
      if "pruned" in latency and "unpruned" in latency:
        lat["pruned_over_unpruned_p50_per_round"] = _paired(
            results["pruned"]["latency_round_p50_ms"],
            results["unpruned"]["latency_round_p50_ms"])
        lat["pruned_over_unpruned_p99_per_round"] = _paired(
            results["pruned"]["latency_round_p99_ms"],
            results["unpruned"]["latency_round_p99_ms"])
      if "pruned" in latency and "onnxruntime" in latency:
        lat["pruned_over_onnxruntime_p50_per_round"] = _paired(
            results["pruned"]["latency_round_p50_ms"],
            results["onnxruntime"]["latency_round_p50_ms"])
      ratios["batch1"] = lat

    return {**fixed, "rounds": len(seconds[orders[0]][names[0]]),
            "load_average": {"start": [round(x, 2) for x in load_start],
                             "end": [round(x, 2) for x in os.getloadavg()]},
            "systems": results, "ratios": ratios}

  bar = tqdm.trange(rounds, desc="paired rounds", disable=not progress)
  for r in bar:
    sequence = names if r % 2 == 0 else names[::-1]
    for order in orders:
      for name in sequence:
        time.sleep(SETTLE_S)
        if name in engines:
          seconds[order][name].append(_time(lambda: tpjax_pass(engines[name],
                                                               batches[order])))
        else:
          seconds[order][name].append(peers[name].ask(cmd="throughput", order=order)
                                      ["seconds"])
    if lat_n:
      for name in sequence:
        time.sleep(SETTLE_S)
        latency[name].append(tpjax_latency(engines[name]) if name in engines
                             else peers[name].ask(cmd="latency")["seconds"])
    bar.set_postfix({s: round(seconds[orders[0]][s][-1], 2) for s in names})
    if on_round is not None:
      on_round(collect())
  for peer in peers.values():
    peer.close()

  return collect()
