"""Prefill speed and memory of SDTP-pruned against unpruned SmolLM2-135M (issue 11 B, 9).

    python benchmarks/sdtp_decoder_speed.py --workdir=runs/smollm_sdtp \\
        --lengths=1024,2048,4096 --rounds=10 --rounds_at=4096:5 \\
        --out=benchmarks/results/sdtp_decoder_speed.json

Systems, each in its own worker process (started once, loaded, every length warmed up
untimed before any timing):

- `full`: the unpruned prefill through the same layer-by-layer code as SDTP
  (sdtp_decoder.PrunedPrefill without a schedule);
- `sdtp`: the trained predictors, default schedule (compaction after each stage);
- `generator` (optional, --systems): tpjax.generation.Generator's whole-model compiled
  prefill, to show what the layer-by-layer code costs by itself.

A timed call is time to first token: prompt ids in, every layer's keys and values
computed, the first greedy token on the host. The parent runs rounds; in each round
every system measures every length, the system order alternating between rounds, and
the full/sdtp time ratio is taken within the round (median and min/max over rounds).
Memory, per call: the KV cache the prefill leaves (bytes of the valid slots, and of
all allocated slots), and the peak RSS increase during the call (the process's
high-water mark is reset just before it through /proc/self/clear_refs; glibc is told to
return large buffers to the OS, MALLOC_MMAP_THRESHOLD_, so freed memory is not reused
unseen). Workers are pinned to the same `--threads` CPUs with XLA's XNNPACK matmuls.
"""

import argparse
import json
import os
import sys
import time

import worker_pipe  # benchmarks/, the directory of this script



def _status_kb(field: str) -> int:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
  with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")


class Worker:
  """One system: loads the model (and predictors) and answers prefill requests."""

  def __init__(self, system: str, workdir: str, model_name: str, ratio=None):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from tpjax.inference import generation  # pylint: disable=g-import-not-at-top
    from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
    from tpjax.pruning import sdtp_decoder  # pylint: disable=g-import-not-at-top
    self.jax, self.np, self.sdtp_decoder = jax, np, sdtp_decoder
    model, params, _ = pretrained.load_pretrained(model_name)
    self.system = system
    if system == "generator":
      self.gen = generation.Generator(model, params)
    elif system == "full":
      self.engine = sdtp_decoder.PrunedPrefill(model, params, None)
    elif system == "sdtp":
      predictors, schedule, _ = sdtp_decoder.load_predictors(workdir, model.config, ratio)
      self.engine = sdtp_decoder.PrunedPrefill(model, params, schedule,
                                               sdtp_decoder.predictor_scorer, predictors)
    else:
      raise ValueError(f"Unknown system {system!r}: full, sdtp or generator.")

  def prefill(self, ids):
    jax, np = self.jax, self.np
    rss = _status_kb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if self.system == "generator":
      token, _, caches, _ = self.gen.prefill([ids], 1, jax.random.PRNGKey(0))
      int(np.asarray(token)[0])
      jax.block_until_ready(caches)
      seconds = time.perf_counter() - start
      kv_slots = sum(2 * c.keys.size * c.keys.dtype.itemsize for c in caches)
      kv_valid = sum(2 * int(np.asarray(c.valid).sum()) * c.keys.shape[1] * c.keys.shape[3]
                     * c.keys.dtype.itemsize for c in caches)
      kept = [len(ids)]
    else:
      valid = np.ones((1, len(ids)), bool)
      result = self.engine.prefill(np.asarray([ids], np.int32), valid)
      int(np.asarray(jax.numpy.argmax(result.logits, axis=-1))[0])
      jax.block_until_ready(result.kv)
      seconds = time.perf_counter() - start
      kv_valid = self.sdtp_decoder.kv_cache_bytes(result)
      kv_slots = sum(k.size * k.dtype.itemsize + v.size * v.dtype.itemsize
                     for k, v in result.kv)
      kept = result.kept.tolist()
    peak = _status_kb("VmHWM") - rss
    return {"seconds": seconds, "kv_valid_bytes": kv_valid, "kv_slot_bytes": kv_slots,
            "peak_rss_increase_bytes": 1024 * peak, "kept": kept}


def worker_main(system, workdir, model_name, threads, ratio):
  worker_pipe.pin(threads)
  worker = Worker(system, workdir, model_name, ratio)
  worker_pipe.serve(lambda r: worker.prefill(r["ids"]) if r["op"] == "prefill" else None)


def start_client(system, args) -> worker_pipe.Client:
  env = worker_pipe.worker_env(True, MALLOC_MMAP_THRESHOLD_="1048576")
  command = [sys.executable, os.path.abspath(__file__), f"--worker={system}",
             f"--workdir={args.workdir}", f"--model={args.model}", f"--threads={args.threads}"]
  return worker_pipe.Client(system, command + ([f"--ratio={args.ratio}"] if args.ratio else []),
                            env)


def prompt_ids(tokenizer, length: int) -> list[int]:
  """Held-out SQuAD articles (evaluation half), joined, cut to `length` tokens."""
  from tpjax.data import squad_docs  # pylint: disable=g-import-not-at-top
  _, evaluation = squad_docs.split(squad_docs.load_articles())
  ids = []
  for article in evaluation:
    ids += tokenizer.encode(article.text + squad_docs.SEPARATOR)
    if len(ids) >= length:
      return ids[:length]
  raise ValueError(f"The evaluation articles have fewer than {length} tokens.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--workdir", default="runs/smollm_sdtp")
  parser.add_argument("--model", default="smollm2-135m")
  parser.add_argument("--ratio", type=float, default=None,
                      help="keep ratio per stage (default: the trained schedule's)")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--lengths", default="1024,2048,4096")
  parser.add_argument("--systems", default="full,sdtp")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--rounds_at", default="", help="fewer rounds at some lengths, "
                      "e.g. 4096:5")
  parser.add_argument("--deadline", type=float, default=0,
                      help="unix time after which no new round starts (0: none)")
  parser.add_argument("--out", default="benchmarks/results/sdtp_decoder_speed.json")
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, args.workdir, args.model, args.threads, args.ratio)
    return

  from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
  from tpjax.pruning import sdtp_decoder  # pylint: disable=g-import-not-at-top
  lengths = [int(x) for x in args.lengths.split(",")]
  model, _, tokenizer = pretrained.load_pretrained(args.model)
  model_config = model.config
  del model
  ids = prompt_ids(tokenizer, max(lengths))
  names = args.systems.split(",")
  if names[:2] != ["full", "sdtp"]:
    raise SystemExit("--systems must start with full,sdtp.")
  clients = {}
  for name in names:
    start = time.perf_counter()
    clients[name] = start_client(name, args)
    for length in lengths:
      clients[name].ask(op="prefill", ids=ids[:length])
    print(f"{name}: loaded and warmed up in {time.perf_counter() - start:.0f} s", flush=True)

  rounds_at = {int(k): int(v) for k, v in
               (item.split(":") for item in args.rounds_at.split(",") if item)}
  rounds = []
  for r in range(args.rounds):
    if r and args.deadline and time.time() > args.deadline:
      print(f"deadline reached after {r} rounds", flush=True)
      break
    order = names if r % 2 == 0 else names[::-1]
    record = {"order": order, "load_average": os.getloadavg()[0], "prefill": {}}
    for length in lengths:
      if r >= rounds_at.get(length, args.rounds):
        continue
      record["prefill"][str(length)] = {n: clients[n].ask(op="prefill", ids=ids[:length])
                                        for n in order}
    rounds.append(record)
    print(f"round {r}: " + json.dumps({k: {n: round(v["seconds"], 3) for n, v in d.items()}
                                       for k, d in record["prefill"].items()}), flush=True)
  for client in clients.values():
    client.close()

  _, schedule, _ = sdtp_decoder.load_predictors(args.workdir, model_config, args.ratio)
  summary = {}
  for length in lengths:
    per_round = [rec["prefill"][str(length)] for rec in rounds if str(length) in rec["prefill"]]
    keep = sdtp_decoder.keep_fraction(model_config, schedule, length)
    entry = {"keep": keep, "flops_reduction": 1 / keep["relative_macs"]}
    for n in names:
      entry[n] = {"ttft_seconds": worker_pipe.spread([s[n]["seconds"] for s in per_round]),
                  "peak_rss_increase_mib": worker_pipe.spread(
                      [s[n]["peak_rss_increase_bytes"] / 2**20 for s in per_round]),
                  "kv_valid_mib": per_round[0][n]["kv_valid_bytes"] / 2**20,
                  "kv_slot_mib": per_round[0][n]["kv_slot_bytes"] / 2**20,
                  "kept_per_layer": per_round[0][n]["kept"]}
    entry["speedup_full_over_sdtp"] = worker_pipe.spread(
        [s["full"]["seconds"] / s["sdtp"]["seconds"] for s in per_round])
    entry["speedup_over_flops_reduction"] = (entry["speedup_full_over_sdtp"]["median"]
                                             / entry["flops_reduction"])
    if "generator" in names:
      entry["generator_over_full_time"] = worker_pipe.spread(
          [s["generator"]["seconds"] / s["full"]["seconds"] for s in per_round])
    summary[str(length)] = entry
  result = {"model": args.model, "workdir": args.workdir, "threads": args.threads,
            "cpu_count": os.cpu_count(), "command": " ".join(["python"] + sys.argv),
            "schedule": {"layers": schedule.layers, "keep": schedule.keep},
            "summary": summary, "rounds": rounds}
  print(json.dumps(summary, indent=1))
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(markdown(summary))


def markdown(summary: dict) -> str:
  """The README table from a summary."""
  head = ["prompt tokens", "prefill MACs reduction", "full TTFT (s)", "SDTP TTFT (s)",
          "speedup, per round", "speedup / MACs reduction", "KV cache full / SDTP (MiB)",
          "peak RSS increase full / SDTP (MiB)", "rounds"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for length, e in summary.items():
    sp = e["speedup_full_over_sdtp"]
    lines.append("| " + " | ".join([
        length, f"{e['flops_reduction']:.2f}x", f"{e['full']['ttft_seconds']['median']:.2f}",
        f"{e['sdtp']['ttft_seconds']['median']:.2f}",
        f"**{sp['median']:.2f}x** [{sp['min']:.2f}, {sp['max']:.2f}]",
        f"{e['speedup_over_flops_reduction']:.2f}",
        f"{e['full']['kv_valid_mib']:.1f} / {e['sdtp']['kv_valid_mib']:.1f}",
        f"{e['full']['peak_rss_increase_mib']['median']:.0f} / "
        f"{e['sdtp']['peak_rss_increase_mib']['median']:.0f}", str(sp["n"])]) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
