"""SDTP against training-free prefill pruners on held-out SQuAD articles, with intervals.

    python benchmarks/sdtp_decoder_quality.py --workdir=runs/smollm_sdtp --ratio=0.88 \\
        --out=benchmarks/results/sdtp_decoder_eval.json

Systems, all through the same compacting prefill and selection interface
(tpjax/pruning/sdtp_decoder.py), every pruned one keeping the same number of tokens at
the same stages and the same always-kept first and last tokens (checked per prompt):
`full` (unpruned, the reference), `sdtp` (the trained predictors), the training-free
`recency` (StreamingLLM sinks + local window), `random` (seeded, `--seed`), `attention`
(attention received from the last `--attention_queries` prompt tokens in the previous
layer: LazyLLM / H2O / SnapKV) and `oracle` (the true saliency of the prompt being
evaluated: the bound a predictor could reach; one extra forward and backward pass per
prompt, each layer recomputed so 4096 tokens fit in memory).

Tasks and metrics (tpjax/inference/sdtp_eval.py): documents (`--docs` per length;
KL(full || pruned), top-1 agreement and NLL over the `--continuation` true tokens, teacher
forced through the pruned prompt's KV cache), SQuAD questions whose gold answer ends in
the first half of the prompt (`--qa` per length; gold-answer NLL, exact match, exact
match where `full` is exact), and a passkey at `--depths` (`--passkey` haystacks per
length; retrieval, key NLL). Every metric gets a 95% bootstrap interval over articles,
and every pruned system the paired interval of its difference from `--compare_to`.

Prompts come from the evaluation half of squad_docs.split (odd article indices); the
predictors trained on the even half (`train_articles` in the workdir's sdtp.json), and a
shared title is an error. The split is recorded in the output. Items run round-robin
(item i of every task and length before item i + 1), and the JSON is rewritten after
each, so `--deadline` stops a run with every task covered about equally;
`--summarize_only` recomputes intervals and the table from such a file, and `--resume`
continues it where it stopped: only with the same settings, schedule and predictors
(their SHA-256 is recorded) and the same prompts (each row records its prompt's hash).

`--smoke`: a tiny random decoder with a byte tokenizer, random predictors and small
counts, so the whole path runs in seconds (tests/test_sdtp_decoder_eval.py).
"""

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from typing import Callable

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import flax.serialization  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tpjax.data import squad_docs  # pylint: disable=g-import-not-at-top
from tpjax.inference import sdtp_eval  # pylint: disable=g-import-not-at-top
from tpjax.models import decoder  # pylint: disable=g-import-not-at-top
from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
from tpjax.pruning import sdtp_decoder  # pylint: disable=g-import-not-at-top
from tpjax.results import tables  # pylint: disable=g-import-not-at-top

SYSTEMS = ("full", "sdtp", "recency", "random", "attention", "oracle")
# --smoke's defaults: prompts long enough for the byte tokenizer's chat template.
SMOKE = {"lengths": "320", "docs": "3", "qa": "2", "passkey": "1",
         "continuation": 8, "qa_answer_slots": 16, "qa_steps": 4,
         "bootstrap_resamples": 200, "out": "sdtp_decoder_eval_smoke.json"}
TINY = decoder.DecoderConfig(
    vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e4,
    max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1,
    eos_token_id=2, pad_token_id=0)
TINY_SCHEDULE = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.45), keep_first=2,
                                      keep_last=0.1, step=8)


def parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/smollm_sdtp")
  parser.add_argument("--model", default="smollm2-135m")
  parser.add_argument("--ratio", type=float, default=None,
                      help="keep ratio per stage (default: the trained schedule's)")
  parser.add_argument("--squad_path", default=squad_docs.DEFAULT_PATH)
  parser.add_argument("--tasks", default=",".join(sdtp_eval.TASKS))
  parser.add_argument("--lengths", default="1024,2048,4096", help="prompt tokens")
  parser.add_argument("--docs", default="32,32,16", help="documents per length")
  parser.add_argument("--continuation", type=int, default=128)
  parser.add_argument("--qa", default="32,32,16", help="questions per length")
  parser.add_argument("--qa_answer_slots", type=int, default=32,
                      help="longest gold answer (tokens); longer ones are skipped")
  parser.add_argument("--qa_steps", type=int, default=32, help="greedy answer tokens")
  parser.add_argument("--passkey", default="16,16,8", help="haystacks per length")
  parser.add_argument("--depths", default="0.1,0.5,0.9", help="passkey depths")
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--extra_predictors", default="",
                      help="name:workdir,... more trained predictors, each a system "
                           "(e.g. another recipe's) to name in --systems")
  parser.add_argument("--compare_to", default="sdtp",
                      help="paired differences of every other pruned system from this")
  parser.add_argument("--seed", type=int, default=0,
                      help="random baseline, question order and pass keys")
  parser.add_argument("--attention_queries", type=int, default=32,
                      help="attention baseline: last prompt tokens whose attention counts")
  parser.add_argument("--oracle_target_last", type=float, default=None,
                      help="oracle's target region (default: the schedule's keep_last)")
  parser.add_argument("--oracle_target", default=None,
                      choices=sdtp_decoder.SALIENCY_TARGETS,
                      help="what the oracle's saliency measures (default: the "
                           "predictors' training target)")
  parser.add_argument("--bootstrap_resamples", type=int, default=10000)
  parser.add_argument("--confidence", type=float, default=0.95)
  parser.add_argument("--out", default="benchmarks/results/sdtp_decoder_eval.json")
  parser.add_argument("--deadline", type=float, default=0,
                      help="unix time after which no new item starts (0: none)")
  parser.add_argument("--summarize_only", action="store_true",
                      help="recompute the summary of an existing (partial) --out file")
  parser.add_argument("--resume", action="store_true",
                      help="continue an existing (partial) --out file of the same run")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny random decoder, byte tokenizer, small counts")
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--smoke" in argv:
    parser.set_defaults(**SMOKE)
  return parser.parse_args(argv)


def _counts(text: str, lengths: list, flag: str) -> list:
  counts = [int(c) for c in text.split(",")]
  if len(counts) != len(lengths):
    raise SystemExit(f"--{flag} gives {len(counts)} counts for {len(lengths)} lengths.")
  return counts


def load(args):
  """(model, params, tokenizer, predictors, schedule, the predictors' extras:
  sdtp_decoder.load_predictors' "sha256", "train_articles", "config")."""
  if args.smoke:
    model = decoder.DecoderModel(TINY)
    params = decoder.init_params(model, jax.random.PRNGKey(0))
    # Larger weights make attention (and so pruning) matter in a random model.
    params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
    predictors = sdtp_decoder.init_predictors(TINY, TINY_SCHEDULE, jax.random.PRNGKey(1))
    train, _ = squad_docs.split(squad_docs.load_articles(args.squad_path))
    meta = {"train_articles": [a.title for a in train],
            "sha256": hashlib.sha256(flax.serialization.to_bytes(predictors)).hexdigest()}
    return model, params, sdtp_eval.ByteTokenizer(), predictors, TINY_SCHEDULE, meta
  model, params, tokenizer = pretrained.load_pretrained(args.model)
  predictors, schedule, meta = sdtp_decoder.load_predictors(args.workdir, model.config,
                                                              args.ratio)
  trained_on = meta.get("config", {}).get("squad_path")
  if trained_on and os.path.abspath(trained_on) != os.path.abspath(args.squad_path):
    raise SystemExit(f"the predictors trained on {trained_on}, not {args.squad_path}: "
                     "the article split is defined per file.")
  return model, params, tokenizer, predictors, schedule, meta


def extra_predictors(args, config) -> dict:
  """{name: (per-stage predictors, {"workdir", "sha256" of their file})} of
  --extra_predictors, at --ratio (or their own schedule's ratios)."""
  out = {}
  for entry in filter(None, args.extra_predictors.split(",")):
    name, _, workdir = entry.partition(":")
    if name in SYSTEMS or not workdir:
      raise SystemExit(f"--extra_predictors: {entry!r} is not name:workdir with a new name.")
    predictors, _, meta = sdtp_decoder.load_predictors(workdir, config, args.ratio)
    out[name] = (predictors, {"workdir": workdir, "sha256": meta["sha256"]})
  return out


def engines_for(args, model, params, predictors, schedule, extra=None) -> dict:
  """{system: PrunedPrefill} for --systems, full first; `extra` as extra_predictors'."""
  make = {
      "full": lambda: sdtp_decoder.PrunedPrefill(model, params, None),
      "sdtp": lambda: sdtp_decoder.PrunedPrefill(
          model, params, schedule, sdtp_decoder.predictor_scorer, predictors),
      "recency": lambda: sdtp_decoder.PrunedPrefill(
          model, params, schedule, sdtp_decoder.recency_scorer, None),
      "random": lambda: sdtp_decoder.PrunedPrefill(
          model, params, schedule, sdtp_decoder.random_scorer,
          jax.random.PRNGKey(args.seed)),
      "attention": lambda: sdtp_decoder.PrunedPrefill(
          model, params, schedule,
          sdtp_decoder.attention_scorer(model.config, args.attention_queries), None),
      # score_params: this prompt's saliency, set before each prefill.
      "oracle": lambda: sdtp_decoder.PrunedPrefill(
          model, params, schedule, sdtp_decoder.oracle_scorer, None),
  }
  for name, (other, _) in (extra or {}).items():
    make[name] = functools.partial(sdtp_decoder.PrunedPrefill, model, params, schedule,
                                   sdtp_decoder.predictor_scorer, other)
  systems = args.systems.split(",")
  unknown = set(systems) - set(make)
  if unknown:
    raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {sorted(make)}.")
  if systems[0] != "full":
    raise SystemExit("--systems must start with full (the reference of every metric).")
  return {name: make[name]() for name in systems}


def oracle_prepare(args, model, params, schedule, meta) -> Callable:
  """`prepare(name, engine, item)` before each prefill: the oracle's scores become the
  prompt's true saliency (--oracle_target, by default the predictors' training target,
  which is written into args for the record; --oracle_target_last)."""
  if args.oracle_target is None:
    args.oracle_target = sdtp_decoder.saliency_target(meta.get("config", {}))
  saliency = sdtp_eval.oracle_saliency(
      model.config, schedule,
      schedule.keep_last if args.oracle_target_last is None else args.oracle_target_last,
      args.oracle_target)

  def prepare(name, engine, item):
    if name == "oracle":
      engine.score_params = saliency(params, jnp.asarray([item.prompt], jnp.int32))
  return prepare


def items_for(args, tokenizer, evaluation) -> list:
  """Every task's items, round-robin over tasks and lengths."""
  lengths = [int(n) for n in args.lengths.split(",")]
  tasks = args.tasks.split(",")
  tokens = {a.title: tokenizer.encode(a.text, add_special_tokens=False)
            for a in evaluation}
  sets = []
  if "documents" in tasks:
    sets += [sdtp_eval.document_items(tokens, n, c, args.continuation)
             for n, c in zip(lengths, _counts(args.docs, lengths, "docs"))]
  if "qa" in tasks:
    sets += [sdtp_eval.qa_items(tokenizer, evaluation, tokens, n, c, args.qa_answer_slots,
                                args.seed)
             for n, c in zip(lengths, _counts(args.qa, lengths, "qa"))]
  if "passkey" in tasks:
    depths = [float(d) for d in args.depths.split(",")]
    sets += [sdtp_eval.passkey_items(tokenizer, tokens, n, c, depths, args.seed)
             for n, c in zip(lengths, _counts(args.passkey, lengths, "passkey"))]
  return sdtp_eval.round_robin(sets)


def summarize(results: dict, args) -> dict:
  return sdtp_eval.summarize(results["items"], results["systems"], args.compare_to,
                             args.confidence, args.bootstrap_resamples, args.seed)


def main(argv=None) -> dict:
  args = parse(argv)
  if args.summarize_only:
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
    results["summary"] = summarize(results, args)
    _save(results, args.out)
    print(tables.sdtp_decoder_eval_table(results))
    return results

  model, params, tokenizer, predictors, schedule, meta = load(args)
  train_titles = meta.get("train_articles", [])
  predictors_hash = meta["sha256"]
  train, evaluation = squad_docs.split(squad_docs.load_articles(args.squad_path))
  overlap = sorted(set(train_titles) & {a.title for a in evaluation})
  if overlap:
    raise SystemExit(f"the predictors trained on evaluation articles {overlap}.")
  extra = extra_predictors(args, model.config)
  engines = engines_for(args, model, params, predictors, schedule, extra)
  items = items_for(args, tokenizer, evaluation)
  prepare = oracle_prepare(args, model, params, schedule, meta)
  lengths = sorted({item.length for item in items})
  results = {
      "command": _command(argv),
      "model": "tiny random decoder (--smoke)" if args.smoke else args.model,
      "workdir": None if args.smoke else args.workdir,
      "schedule": {"layers": list(schedule.layers), "keep": list(schedule.keep),
                   "keep_first": schedule.keep_first, "keep_last": schedule.keep_last,
                   "step": schedule.step},
      "systems": list(engines), "compare_to": args.compare_to,
      "split": {"source": os.path.basename(args.squad_path),
                "rule": "squad_docs.split: even article indices train the predictors, "
                        "odd ones evaluate",
                "train_articles": list(train_titles),
                "evaluation_articles": sorted({item.group for item in items})},
      "settings": {k: getattr(args, k) for k in (
          "tasks", "lengths", "docs", "continuation", "qa", "qa_answer_slots", "qa_steps",
          "passkey", "depths", "seed", "attention_queries", "oracle_target_last",
          "oracle_target")},
      "bootstrap": {"confidence": args.confidence, "resamples": args.bootstrap_resamples,
                    "seed": args.seed, "unit": "article (all its items together)"},
      "keep": {str(n): sdtp_decoder.keep_fraction(model.config, schedule, n)
               for n in lengths},
      "items": []}
  results["predictors_sha256"] = predictors_hash
  if extra:
    results["extra_predictors"] = {name: record for name, (_, record) in extra.items()}
  previous = _resumable(results, items, args.out) if args.resume else None
  done = len(previous["items"]) if previous else 0
  if previous:
    results["items"] = previous["items"]
    results["command"] = previous["command"]
    results["resumed"] = previous.get("resumed", []) + [
        {"at_item": done, "command": _command(argv)}]
    print(f"resuming {args.out} after {done} of {len(items)} items", flush=True)
  # seconds: evaluation time over every session of the run
  start = time.time() - (previous.get("seconds", sum(r["seconds"] for r in previous["items"]))
                         if previous else 0)
  for item in items[done:]:
    if args.deadline and time.time() > args.deadline:
      print("deadline reached: stopping; the summary covers the items done", flush=True)
      results["stopped_at_deadline"] = True
      break
    t0 = time.time()
    row = sdtp_eval.evaluate_item(engines, item, pad_id=model.config.pad_token_id or 0,
                                  eos=model.config.eos_token_id, decode=tokenizer.decode,
                                  qa_steps=args.qa_steps, prepare=prepare)
    row["seconds"] = time.time() - t0
    row["prompt_sha1"] = _prompt_hash(item)
    results["items"].append(row)
    _save(results, args.out)
    metric = {"documents": "kl", "qa": "nll", "passkey": "retrieved"}[item.task]
    print(f"[{time.time() - start:6.0f}s] {item.task} {item.length} {item.group}: "
          + ", ".join(f"{n} {metric} {v[metric]:.3f}"
                      for n, v in row["systems"].items() if metric in v), flush=True)
  results["seconds"] = time.time() - start
  results["summary"] = summarize(results, args)
  _save(results, args.out)
  print(tables.sdtp_decoder_eval_table(results))
  return results


def _command(argv) -> str:
  return " ".join(sys.argv if argv is None else ["sdtp_decoder_quality.py", *argv])


def _prompt_hash(item) -> str:
  return hashlib.sha1(np.asarray(item.prompt, np.int32).tobytes()).hexdigest()


def _resumable(results: dict, items: list, path: str):
  """The partial results in `path` this run continues (None if there is no file).

  Exits if the file belongs to another run: other settings, schedule, systems or
  predictors, or a row whose prompt is not this run's item at that position.
  """
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    previous = json.load(f)
  for key in ("model", "schedule", "systems", "settings", "predictors_sha256",
              "extra_predictors"):
    if previous.get(key) != results.get(key):
      raise SystemExit(f"--resume: {path} has another {key} ({previous.get(key)!r}, this "
                       f"run {results.get(key)!r}); evaluate into a new --out instead.")
  rows = previous["items"]
  for i, (row, item) in enumerate(zip(rows, items)):
    if row.get("prompt_sha1") != _prompt_hash(item):
      raise SystemExit(f"--resume: item {i} of {path} has another prompt than this run's; "
                       "evaluate into a new --out instead.")
  if len(rows) > len(items):
    raise SystemExit(f"--resume: {path} holds {len(rows)} items, this run has "
                     f"{len(items)}.")
  return previous


def _save(results: dict, path: str):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)


if __name__ == "__main__":
  main()
