"""Quality of SDTP-pruned prefill on held-out SQuAD articles (issue 11 part B, item 8).

    python benchmarks/sdtp_decoder_quality.py --workdir=runs/smollm_sdtp \\
        --lengths=1024,2048,4096 --docs=8,8,4 --qa_questions=24 \\
        --out=benchmarks/results/sdtp_decoder_quality.json

Systems, all through the same compacting prefill code and selection interface
(tpjax/pruning/sdtp_decoder.py; every pruned system keeps the same number of tokens at
the same stages, and the same always-kept first 4 and last 10%): `full` (no pruning),
`sdtp` (the trained predictors), and the training-free `recency` (StreamingLLM sinks +
local window), `random` (seeded, `--seed`), `attention` (attention received from the
last `--attention_queries` prompt tokens in the previous layer: LazyLLM / H2O / SnapKV)
and `oracle` (the true saliency of the prompt being evaluated, `prompt_saliency` with
the training target: the bound a predictor could reach; one extra forward + backward
per prompt).

(a) Continuation loss: the first L tokens of a held-out article are the prompt; the
mean loss of the next 128 true tokens, decoded through each layer's pruned cache.
(b) Greedy agreement: the fraction of 32 greedy tokens equal to `full`'s, position by
position. (c) QA: an evaluation article's paragraphs around a question's answer (up to
`--qa_length` tokens with the question), the question, the chat template; greedy answer
(at most 32 tokens) scored by SQuAD F1 against the gold answers.
Articles are the evaluation half of squad_docs.split (never trained on), in file order:
for length L the first `docs` of them with at least L + 128 tokens. QA questions: the
first question of evenly spaced paragraphs, `qa_per_article` per article in order.
Items run round-robin (document i of every length, then article i's questions), so
that `--deadline` stops a run with every length and QA covered about equally.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tpjax.data import squad_docs  # pylint: disable=g-import-not-at-top
from tpjax.models import pretrained  # pylint: disable=g-import-not-at-top
from tpjax.pruning import sdtp_decoder  # pylint: disable=g-import-not-at-top


def _pad(ids: list[int], seq: int, pad_id: int):
  out = np.full((1, seq), pad_id, np.int32)
  valid = np.zeros((1, seq), bool)
  out[0, :len(ids)], valid[0, :len(ids)] = ids, True
  return out, valid


def qa_items(tokenizer, articles, count: int, per_article: int, length: int):
  """(title, question, prompt ids) for `count` questions."""
  items = []
  count_tokens = lambda text: len(tokenizer.encode(text))
  for article in articles:
    by_paragraph = {}
    for q in article.questions:
      by_paragraph.setdefault(q.paragraph, q)
    paragraphs = sorted(by_paragraph)
    picks = np.linspace(0, len(paragraphs) - 1, per_article).round().astype(int)
    for i in dict.fromkeys(picks.tolist()):
      q = by_paragraph[paragraphs[i]]
      overhead = count_tokens(tokenizer.apply_chat_template(
          [{"role": "user", "content": squad_docs.qa_prompt("", q.question)}]))
      context = squad_docs.qa_context(article, q, length - overhead - 8, count_tokens)
      prompt = tokenizer.apply_chat_template(
          [{"role": "user", "content": squad_docs.qa_prompt(context, q.question)}])
      items.append((article.title, q, tokenizer.encode(prompt)))
      if len(items) == count:
        return items
  return items


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/smollm_sdtp")
  parser.add_argument("--model", default="smollm2-135m")
  parser.add_argument("--ratio", type=float, default=None,
                      help="keep ratio per stage (default: the trained schedule's)")
  parser.add_argument("--lengths", default="1024,2048,4096")
  parser.add_argument("--docs", default="8,8,4")
  parser.add_argument("--continuation", type=int, default=128)
  parser.add_argument("--greedy", type=int, default=32)
  parser.add_argument("--qa_questions", type=int, default=24)
  parser.add_argument("--qa_per_article", type=int, default=3)
  parser.add_argument("--qa_length", type=int, default=1024)
  parser.add_argument("--systems", default="full,sdtp,recency,random,attention")
  parser.add_argument("--seed", type=int, default=0, help="random baseline's seed")
  parser.add_argument("--attention_queries", type=int, default=32,
                      help="attention baseline: last prompt tokens whose attention counts")
  parser.add_argument("--oracle_target_last", type=float, default=None,
                      help="oracle's target region (default: the schedule's keep_last)")
  parser.add_argument("--out", default="benchmarks/results/sdtp_decoder_quality.json")
  parser.add_argument("--deadline", type=float, default=0,
                      help="unix time after which no new item starts (0: none)")
  parser.add_argument("--summarize_only", action="store_true",
                      help="recompute the summary of an existing (partial) --out file")
  args = parser.parse_args()
  if args.summarize_only:
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
    results["keep"] = {int(k): v for k, v in results["keep"].items()}
    results["summary"] = summarize(results, args.systems.split(","))
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    print(markdown(results["summary"], args.systems.split(",")))
    return

  model, params, tokenizer = pretrained.load_pretrained(args.model)
  predictors, schedule, meta = sdtp_decoder.load_predictors(args.workdir, model.config,
                                                              args.ratio)
  _, evaluation = squad_docs.split(squad_docs.load_articles())
  assert not set(meta.get("train_articles", [])) & {a.title for a in evaluation}
  engines = {
      "full": sdtp_decoder.PrunedPrefill(model, params, None),
      "sdtp": sdtp_decoder.PrunedPrefill(model, params, schedule,
                                         sdtp_decoder.predictor_scorer, predictors),
      "recency": sdtp_decoder.PrunedPrefill(model, params, schedule,
                                            sdtp_decoder.recency_scorer, None),
      "random": sdtp_decoder.PrunedPrefill(model, params, schedule,
                                           sdtp_decoder.random_scorer,
                                           jax.random.PRNGKey(args.seed)),
      "attention": sdtp_decoder.PrunedPrefill(
          model, params, schedule,
          sdtp_decoder.attention_scorer(model.config, args.attention_queries), None),
      # score_params is set per prompt (set_oracle).
      "oracle": sdtp_decoder.PrunedPrefill(model, params, schedule,
                                           sdtp_decoder.oracle_scorer, None),
  }
  oracle_last = (schedule.keep_last if args.oracle_target_last is None
                 else args.oracle_target_last)
  saliency_fn = jax.jit(lambda p, ids: sdtp_decoder.prompt_saliency(
      model.config, p, ids, schedule, oracle_last)[0])

  def set_oracle(ids: list[int], seq: int):
    """The oracle engine's scores: the saliency of this prompt, padded to seq."""
    table = np.zeros((len(schedule.layers), 1, seq), np.float32)
    table[:, :, :len(ids)] = np.asarray(saliency_fn(params, jnp.asarray([ids], jnp.int32)))
    engines["oracle"].score_params = jnp.asarray(table)

  systems = args.systems.split(",")
  unknown = set(systems) - set(engines)
  if unknown:
    raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {sorted(engines)}.")
  if systems[0] != "full":
    raise SystemExit("--systems must start with full (the reference for agreement).")
  results = {"command": " ".join(sys.argv), "workdir": args.workdir,
             "schedule": {"layers": schedule.layers, "keep": schedule.keep,
                          "keep_first": schedule.keep_first,
                          "keep_last": schedule.keep_last, "step": schedule.step},
             "continuation": [], "qa": [], "keep": {}}

  def save():
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)

  tokens = {a.title: tokenizer.encode(a.text) for a in evaluation}
  jobs = []  # (round, kind, payload): round-robin, so a deadline cut stays balanced
  for length, count in zip(map(int, args.lengths.split(",")), map(int, args.docs.split(","))):
    results["keep"][length] = sdtp_decoder.keep_fraction(model.config, schedule, length)
    docs = [a.title for a in evaluation if len(tokens[a.title]) >= length + args.continuation]
    jobs += [(i, "continuation", (length, title)) for i, title in enumerate(docs[:count])]
  questions = qa_items(tokenizer, evaluation, args.qa_questions, args.qa_per_article,
                       args.qa_length)
  per_round = max(1, args.qa_per_article)
  jobs += [(i // per_round, "qa", item) for i, item in enumerate(questions)]
  jobs.sort(key=lambda job: (job[0], job[1] == "qa"))
  pad_id = model.config.pad_token_id or 0
  eos = model.config.eos_token_id
  start = time.time()
  for _, kind, payload in jobs:
    if args.deadline and time.time() > args.deadline:
      print("deadline reached: stopping; the summary covers the items done", flush=True)
      results["stopped_at_deadline"] = True
      break
    if kind == "continuation":
      length, title = payload
      ids = tokens[title]
      prompt = np.asarray([ids[:length]], np.int32)
      cont = np.asarray([ids[length:length + args.continuation]], np.int32)
      row = {"length": length, "title": title}
      if "oracle" in systems:
        set_oracle(ids[:length], length)
      for name in systems:
        engine = engines[name]
        t0 = time.time()
        result = engine.prefill(prompt, np.ones_like(prompt, bool))
        nll = engine.continuation_nll(result, cont)[0]
        greedy = engine.greedy(result, args.greedy)[0]
        row[name] = {"loss": float(nll.mean()), "greedy": greedy.tolist(),
                     "kept_last_layer": int(result.kept[-1]),  # tokens, not slots
                     "seconds": time.time() - t0}
        if name != "full":
          row[name]["agreement"] = float(np.mean(greedy == np.asarray(row["full"]["greedy"])))
      results["continuation"].append(row)
      print(f"[{time.time() - start:6.0f}s] L={length} {title}: " + ", ".join(
          f"{n} loss {row[n]['loss']:.3f}" + (f" agree {row[n]['agreement']:.2f}"
                                              if n != "full" else "")
          for n in systems), flush=True)
    else:
      title, q, ids = payload
      # One padded length for every question, so all share compiled shapes.
      prompt, valid = _pad(ids, args.qa_length, pad_id)
      row = {"title": title, "question": q.question, "answers": list(q.answers),
             "prompt_tokens": len(ids)}
      if "oracle" in systems:
        set_oracle(ids, args.qa_length)
      for name in systems:
        engine = engines[name]
        result = engine.prefill(prompt, valid, size_slots_for=args.qa_length)
        out = engine.greedy(result, 32, eos=eos)[0].tolist()
        out = out[:out.index(eos)] if eos in out else out
        answer = tokenizer.decode(out).strip()
        row[name] = {"answer": answer, "f1": squad_docs.f1(answer, q.answers)}
      results["qa"].append(row)
      print(f"[{time.time() - start:6.0f}s] QA {title}: " + ", ".join(
          f"{n} F1 {row[n]['f1']:.2f}" for n in systems), flush=True)
    save()

  results["summary"] = summarize(results, systems)
  save()
  print(json.dumps(results["summary"], indent=1))
  print(markdown(results["summary"], systems))


def summarize(results, systems) -> dict:
  """Means per length and system; relative loss change and F1 difference vs full."""
  out = {}
  lengths = sorted({r["length"] for r in results["continuation"]})
  results["keep"] = {int(k): v for k, v in results["keep"].items()}
  for length in lengths:
    rows = [r for r in results["continuation"] if r["length"] == length]
    entry = {"docs": len(rows), **results["keep"][length]}
    full = np.array([r["full"]["loss"] for r in rows])
    entry["full_loss"] = float(full.mean())
    for name in systems[1:]:
      loss = np.array([r[name]["loss"] for r in rows])
      entry[name] = {"loss": float(loss.mean()),
                     "loss_change": float(loss.mean() / full.mean() - 1),
                     "loss_change_per_doc": (loss / full - 1).tolist(),
                     "agreement": float(np.mean([r[name]["agreement"] for r in rows]))}
    out[str(length)] = entry
  if results["qa"]:
    qa = {"questions": len(results["qa"]),
          "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in results["qa"]]))}
    for name in systems:
      qa[f"{name}_f1"] = 100 * float(np.mean([r[name]["f1"] for r in results["qa"]]))
    out["qa"] = qa
  return out


def markdown(summary: dict, systems) -> str:
  """README tables from a summary."""
  pruned = systems[1:]
  head = (["prompt tokens", "docs", "kept at last stage / token-layers / MACs", "full loss"]
          + [f"{n} loss (change)" for n in pruned] + [f"{n} greedy agreement" for n in pruned])
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for length, e in summary.items():
    if length == "qa":
      continue
    cells = [length, str(e["docs"]), f"{e['final_kept']:.3f} / {e['token_layers_kept']:.3f} / "
             f"{e['relative_macs']:.3f}", f"{e['full_loss']:.3f}"]
    cells += [f"{e[n]['loss']:.3f} ({100 * e[n]['loss_change']:+.1f}%)" for n in pruned]
    cells += [f"{e[n]['agreement']:.3f}" for n in pruned]
    lines.append("| " + " | ".join(cells) + " |")
  if "qa" in summary:
    qa = summary["qa"]
    lines += ["", "| QA questions | mean prompt tokens | " + " | ".join(
        f"{n} F1" for n in systems) + " |", "|" + " --- |" * (2 + len(systems)),
              f"| {qa['questions']} | {qa['mean_prompt_tokens']:.0f} | " + " | ".join(
                  f"{qa[n + '_f1']:.1f}" for n in systems) + " |"]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
