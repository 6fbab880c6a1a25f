"""Evaluation that separates prefill pruners of the decoder (docs/decoder.md).

Every system (the unpruned reference first, then SDTP and the training-free scorers of
`pruning/sdtp_decoder.py`) prefills the same prompts through `PrunedPrefill`, at the
same stages, kept counts and always-kept tokens, and is scored on three tasks. Every
prompt is built from held-out articles only, token by token, to exactly its nominal
length (so each length compiles once):

- documents: disjoint windows of an article's tokens, prompt + continuation tokens each,
  first windows of every article before second ones (so prompts are never prefixes of
  each other and spread over articles). Metrics over the teacher-forced continuation:
  KL(full || pruned) of the next-token distributions, top-1 agreement with the full
  model's argmax, and the continuation's NLL. The pruned prompt's KV cache decodes the
  true continuation; the reference is the unpruned model on the same tokens.
- qa: a SQuAD question whose gold answer lies in the first half of the prompt (the
  answer span ends before n/2; its start depth spread over 5-45%), context cut from the
  article's tokens around it, then the question, in the chat template. Metrics:
  gold-answer NLL (teacher-forced after the prompt), exact match of the greedy answer,
  and exact match on the questions the unpruned model answers exactly.
- passkey: a 5-digit key in a needle sentence at a depth of held-out article text
  (default 10%, 50%, 90% of the text before it), the same text and key at every depth
  of an item.
  Metrics: retrieval (the greedy tokens equal the key) and the key's NLL.

Each metric is a mean over items with a 95% percentile bootstrap interval
(`bootstrap_interval`) that resamples articles, all of an article's items together,
since items cut from one article are not independent; pruned systems also get the
paired interval of their difference from one system (`summarize`'s `compare_to`).
"""

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tpjax.data import squad_docs
from tpjax.models import decoder as decoder_lib
from tpjax.pruning import sdtp_decoder

TASKS = ("documents", "qa", "passkey")
# Metrics per task, in table order; "em_given_full": exact match on the questions the
# reference answers exactly.
METRICS = {"documents": ("kl", "top1", "nll"),
           "qa": ("nll", "em", "em_given_full", "kl", "top1"),
           "passkey": ("retrieved", "nll", "kl", "top1")}
PASSKEY_INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it "
                 "and memorize it. I will quiz you about the pass key.\n\n")
PASSKEY_NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"


@dataclasses.dataclass(frozen=True)
class Item:
  """One evaluation prompt and the tokens scored after it.

  task: one of TASKS. length: the prompt's tokens (exactly). group: the article it is
  cut from; the bootstrap resamples groups. prompt: the token ids. target: the true
  tokens after the prompt (continuation, gold answer, key). target_slots: the target
  is padded to this many tokens, so one decode shape serves a task. info: what the
  item is (window offset, question, answer depth, key, ...), copied to the results.
  """
  task: str
  length: int
  group: str
  prompt: tuple
  target: tuple
  target_slots: int
  info: dict = dataclasses.field(default_factory=dict)


class ByteTokenizer:
  """UTF-8 bytes as ids 3..258 (0 pad, 1 BOS, 2 EOS) and a plain chat format: a
  stand-in for a real tokenizer with a tiny random decoder (tests, --smoke)."""
  pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
  vocab_size = 259

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    del add_special_tokens
    return (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + 3).tolist()

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    del skip_special_tokens
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", "replace")

  def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
    text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


def document_items(tokens: dict, length: int, count: int, continuation: int) -> list:
  """`count` documents: disjoint windows of `length` + `continuation` tokens.

  Args:
    tokens: {article title: its token ids}, in article order.
    length: prompt tokens; continuation: scored tokens after the prompt.
  Returns:
    Items; window w of every article before window w + 1 of any.
  Raises:
    ValueError: if the articles hold fewer than `count` windows.
  """
  span = length + continuation
  windows = {title: len(ids) // span for title, ids in tokens.items()}
  items = []
  for w in range(max(windows.values(), default=0)):
    for title, ids in tokens.items():
      if w < windows[title] and len(items) < count:
        start = w * span
        items.append(Item("documents", length, title, tuple(ids[start:start + length]),
                          tuple(ids[start + length:start + span]), continuation,
                          {"offset": start}))
  if len(items) < count:
    raise ValueError(f"{len(tokens)} held-out articles hold {len(items)} disjoint windows "
                     f"of {length} + {continuation} tokens, fewer than the {count} asked "
                     "for; ask for fewer documents or shorter prompts.")
  return items


def _split_template(tokenizer, render: Callable[[str], str]) -> tuple[list, list]:
  """Token ids before and after the slot where `render` puts its argument."""
  mark = "\x00SLOT\x00"
  before, after = render(mark).split(mark)
  return tokenizer.encode(before), tokenizer.encode(after, add_special_tokens=False)


def _depth(i: int) -> float:
  """Answer start depths spread evenly over [0.05, 0.45) (golden-ratio sequence)."""
  return 0.05 + 0.4 * ((i * 0.6180339887498949) % 1.0)


def qa_items(tokenizer, articles: Sequence[squad_docs.Article], tokens: dict, length: int,
             count: int, answer_slots: int, seed: int = 0) -> list:
  """`count` chat prompts of `length` tokens whose gold answer ends in the first half.

  The context is a window of the article's tokens placed so that the answer starts at
  depth `_depth(i)` of the prompt for item i (moved where the article's start or end
  forces it; kept only if the answer still ends before n / 2). Questions are taken in a
  seeded order per article, articles in turn; windows of one article never overlap.

  Args:
    tokenizer: encode/decode/apply_chat_template.
    articles: held-out articles; tokens: {title: ids of article.text}.
    length: prompt tokens; answer_slots: longest gold answer (tokens) kept.
  Returns:
    Items with info: question, answers, answer_depth (start, fraction of the prompt),
    answer_end_depth.
  Raises:
    ValueError: if fewer than `count` questions qualify.
  """
  candidates = {}
  for a, article in enumerate(articles):
    order = np.random.RandomState(seed + a).permutation(len(article.questions))
    candidates[article.title] = [article.questions[i] for i in order]
  used = {a.title: [] for a in articles}
  items = []
  progress = True
  while len(items) < count and progress:
    progress = False
    for article in articles:
      if len(items) == count:
        break
      queue = candidates[article.title]
      while queue:
        item = _qa_item(tokenizer, article, tokens[article.title], queue.pop(0), length,
                        answer_slots, _depth(len(items)), used[article.title])
        if item is not None:
          items.append(item)
          progress = True
          break
  if len(items) < count:
    raise ValueError(f"only {len(items)} held-out questions fit {length}-token prompts "
                     f"with the answer in the first half, fewer than the {count} asked "
                     "for.")
  return items


def _qa_item(tokenizer, article, ids, question, length, answer_slots, depth, used):
  """One QA item, or None when the question does not fit (see qa_items)."""
  offset = squad_docs.answer_offset(article, question)
  if offset < 0:
    return None
  answer = question.answers[0]
  target = tokenizer.encode(answer, add_special_tokens=False)
  if not target or len(target) > answer_slots:
    return None
  render = lambda context: tokenizer.apply_chat_template(
      [{"role": "user", "content": squad_docs.qa_prompt(context, question.question)}])
  before, after = _split_template(tokenizer, render)
  budget = length - len(before) - len(after)
  if budget <= 0 or len(ids) < budget:
    return None
  # Token span of the answer in the article (prefix encodings: exact up to a merge at
  # the boundary, checked below by decoding the window).
  first = len(tokenizer.encode(article.text[:offset], add_special_tokens=False))
  last = len(tokenizer.encode(article.text[:offset + len(answer)],
                              add_special_tokens=False))
  start = first - (round(depth * length) - len(before))
  start = min(max(start, 0), len(ids) - budget)
  end_depth = (len(before) + last - start) / length
  window = ids[start:start + budget]
  if (end_depth >= 0.5 or first - 1 < start or answer not in tokenizer.decode(window)
      or any(start < e and s < start + budget for s, e in used)):
    return None
  used.append((start, start + budget))
  return Item("qa", length, article.title, tuple(before + window + after), tuple(target),
              answer_slots, {"question": question.question,
                             "answers": list(question.answers),
                             "answer_depth": (len(before) + first - start) / length,
                             "answer_end_depth": end_depth, "offset": start})


def passkey_items(tokenizer, tokens: dict, length: int, count: int,
                  depths: Sequence[float], seed: int = 0) -> list:
  """`count` haystacks x `depths`: a pass key hidden at each depth of the same text.

  Haystack i is held-out article text from article i (cyclically, continued into the
  next articles when short), starting (i // articles) x length tokens in; the needle
  goes to the sentence end nearest to depth d of the haystack (d = 0.9: 90% of the
  text before it), between the instruction and the question.

  Args:
    tokens: {title: ids}; length: prompt tokens; depths: fractions of the prompt.
  Returns:
    Items (haystack-major), info: key, depth (asked), needle_depth (where the needle
    starts, fraction of the prompt).
  Raises:
    ValueError: if the prompt has no room for a haystack.
  """
  titles = list(tokens)
  if not any(tokens.values()):
    raise ValueError("passkey haystacks need article text; the articles are empty.")
  intro = tokenizer.encode(PASSKEY_INTRO)
  question = tokenizer.encode(PASSKEY_QUESTION, add_special_tokens=False)
  rng = np.random.RandomState(seed)
  items = []
  for i in range(count):
    key = str(rng.randint(10000, 100000))
    needle = tokenizer.encode(PASSKEY_NEEDLE.format(key=key), add_special_tokens=False)
    target = tokenizer.encode(" " + key, add_special_tokens=False)
    room = length - len(intro) - len(needle) - len(question)
    if room <= 0:
      raise ValueError(f"a {length}-token prompt has no room for a passkey haystack.")
    first = i % len(titles)
    skip = (i // len(titles)) * length
    hay, a = [], first
    while len(hay) < skip + room:  # the articles from `first` on, cyclically
      hay += tokens[titles[a % len(titles)]][:skip + room - len(hay)]
      a += 1
    hay = hay[skip:]
    for depth in depths:
      at = _sentence_end(tokenizer, hay, round(depth * room))
      prompt = intro + hay[:at] + needle + hay[at:] + question
      items.append(Item("passkey", length, titles[first], tuple(prompt), tuple(target),
                        len(target), {"key": key, "depth": depth,
                                      "needle_depth": (len(intro) + at) / length}))
  return items


def _sentence_end(tokenizer, ids: list, at: int, reach: int = 32) -> int:
  """The index nearest to `at` (within `reach`) right after a sentence end in ids."""
  at = min(max(at, 0), len(ids))
  for d in range(reach + 1):
    for i in (at - d, at + d):
      if 0 < i <= len(ids) and tokenizer.decode(ids[i - 1:i]).rstrip(" ").endswith(
          (".", "\n")):
        return i
  return at


@jax.jit
def token_kl(full_logits: jax.Array, pruned_logits: jax.Array) -> jax.Array:
  """KL(full || pruned) of next-token distributions.

  Args:
    full_logits, pruned_logits: <float32>[..., vocab].
  Returns:
    <float32>[...]: sum_v p_full (log p_full - log p_pruned), >= 0.
  """
  full = jax.nn.log_softmax(full_logits.astype(jnp.float32), axis=-1)
  pruned = jax.nn.log_softmax(pruned_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(full) * (full - pruned), axis=-1)


def top1_agreement(full_logits, pruned_logits) -> np.ndarray:
  """<float32>[...]: 1 where both argmax tokens are equal. Logits: [..., vocab]."""
  return (np.argmax(full_logits, -1) == np.argmax(pruned_logits, -1)).astype(np.float32)


def kept_shares(result: sdtp_decoder.PrefillResult, layers: Sequence[int],
                spans: Sequence[tuple[int, int]]) -> np.ndarray:
  """<float64>[len(layers), len(spans)]: the share of each prompt span [start, end) of
  positions whose tokens enter each of `layers` (the batch's first row): where in the
  prompt a pruner keeps its tokens."""
  out = np.zeros((len(layers), len(spans)))
  for i, layer in enumerate(layers):
    alive = np.asarray(result.positions[layer])[0][np.asarray(result.valid[layer])[0]]
    for j, (start, end) in enumerate(spans):
      out[i, j] = np.count_nonzero((alive >= start) & (alive < end)) / (end - start)
  return out


def find_span(ids: Sequence[int], part: Sequence[int]) -> tuple[int, int]:
  """[start, end) of the first occurrence of `part` in `ids`.

  Raises:
    ValueError: if `part` does not occur."""
  ids, part = list(ids), list(part)
  for start in range(len(ids) - len(part) + 1):
    if ids[start:start + len(part)] == part:
      return start, start + len(part)
  raise ValueError("the span's tokens do not occur in the prompt.")


def bootstrap_interval(values, groups=None, confidence: float = 0.95,
                       resamples: int = 10000, seed: int = 0) -> Optional[dict]:
  """Mean and percentile bootstrap interval, resampling groups with replacement.

  A resample draws as many groups as there are, with replacement, and takes the mean
  over every item of the drawn groups (a cluster bootstrap: items of one article move
  together). Without groups each item is its own group.

  Args:
    values: <float>[items].
    groups: [items] hashable group labels, or None.
    confidence: the interval's coverage.
    resamples: bootstrap draws.
    seed: the draws' seed.
  Returns:
    {"mean", "lo", "hi", "n" (items), "groups"}, or None without values.
  """
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return None
  labels = np.arange(values.size) if groups is None else np.asarray(groups)
  _, index = np.unique(labels, return_inverse=True)
  sums = np.bincount(index, weights=values)
  counts = np.bincount(index).astype(np.float64)
  draw = np.random.default_rng(seed).integers(0, sums.size, (resamples, sums.size))
  means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
  tail = (1 - confidence) / 2
  lo, hi = np.quantile(means, [tail, 1 - tail])
  return {"mean": float(values.mean()), "lo": float(lo), "hi": float(hi),
          "n": int(values.size), "groups": int(sums.size)}


def oracle_saliency(config: decoder_lib.DecoderConfig, schedule: sdtp_decoder.Schedule,
                    target_last: float, target: str = "hidden") -> Callable:
  """`fn(params, ids <int32>[1, n]) -> <float32>[stages, 1, n]`: the prompt's true
  saliency (`sdtp_decoder.layerwise_saliency_fn`'s `target`, the training target) for
  `oracle_scorer`, computed layer by layer so a 4096-token prompt fits in memory."""
  return sdtp_decoder.layerwise_saliency_fn(config, schedule, target_last, target=target)


def evaluate_item(engines: dict, item: Item, *, pad_id: int = 0,
                  eos: Optional[int] = None, decode: Optional[Callable] = None,
                  qa_steps: int = 32, prepare: Optional[Callable] = None) -> dict:
  """Every system on one item; the first engine is the unpruned reference.

  Args:
    engines: {name: sdtp_decoder.PrunedPrefill}, the reference first.
    item: an Item.
    pad_id: pads the target to item.target_slots (padding is never scored: the logits
      of earlier positions do not see later tokens).
    eos: ends greedy QA answers; decode: ids -> text, for QA answers.
    qa_steps: most greedy tokens of a QA answer.
    prepare: `prepare(name, engine, item)` before each prefill (e.g. the oracle's
      scores of this prompt).
  Returns:
    {"task", "length", "group", item.info..., "systems": {name: metrics}}; metrics:
    nll (mean over the target), kept (tokens entering each layer); pruned systems
    also kl and top1 (means over the target); qa: em and the greedy answer;
    passkey: retrieved.
  Raises:
    RuntimeError: if two pruned systems kept different numbers of tokens.
  """
  ids = np.asarray([item.prompt], np.int32)
  valid = np.ones_like(ids, bool)
  m = len(item.target)
  target = np.full((1, item.target_slots), pad_id, np.int32)
  target[0, :m] = item.target
  row = {"task": item.task, "length": item.length, "group": item.group, **item.info,
         "systems": {}}
  reference = None
  for name, engine in engines.items():
    if prepare is not None:
      prepare(name, engine, item)
    result = engine.prefill(ids, valid)
    # Whole padded target: one shape per task for every compiled function; scores
    # are read from the first m rows only.
    logits = engine.continuation_logits(result, target)[0]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[:m]
    out = {"nll": float(-logp[np.arange(m), item.target].mean()),
           "kept": result.kept.tolist()}
    if reference is None:
      reference, full_logits = name, logits
    else:
      out["kl"] = float(np.asarray(token_kl(full_logits, logits))[:m].mean())
      out["top1"] = float(top1_agreement(np.asarray(full_logits),
                                         np.asarray(logits))[:m].mean())
    if item.task == "qa":
      tokens = engine.greedy(result, qa_steps, eos=eos)[0].tolist()
      tokens = tokens[:tokens.index(eos)] if eos in tokens else tokens
      out["answer"] = decode(tokens).strip()
      out["em"] = squad_docs.exact_match(out["answer"], item.info["answers"])
    elif item.task == "passkey":
      tokens = engine.greedy(result, m)[0].tolist()
      out["retrieved"] = float(tokens == list(item.target))
    row["systems"][name] = out
  kept = {tuple(v["kept"]) for n, v in row["systems"].items() if n != reference}
  if len(kept) > 1:
    raise RuntimeError(f"pruned systems kept different token counts on one prompt: "
                       f"{sorted(kept)}; every scorer must prune the same numbers.")
  return row


def _metric_values(rows: list, name: str, metric: str, reference: str):
  """(values, groups) of one system's metric over rows; em_given_full keeps the rows
  where the reference is exact."""
  if metric == "em_given_full":
    rows = [r for r in rows if r["systems"][reference].get("em") == 1.0]
    metric = "em"
  rows = [r for r in rows if metric in r["systems"][name]]
  return [r["systems"][name][metric] for r in rows], [r["group"] for r in rows]


def _cell(rows: list, systems: Sequence[str], task: str, compare_to: Optional[str],
          interval: Callable) -> dict:
  """Intervals of every metric and system over rows, and paired differences."""
  reference = systems[0]
  cell = {"items": len(rows), "articles": len({r["group"] for r in rows}), "systems": {}}
  for name in systems:
    entry = {}
    for metric in METRICS[task]:
      if metric == "em_given_full" and name == reference:
        continue
      got = interval(*_metric_values(rows, name, metric, reference))
      if got is not None:
        entry[metric] = got
    if compare_to in systems and name not in (reference, compare_to):
      diff = {}
      for metric in METRICS[task]:
        if metric == "em_given_full":
          continue
        # Paired: the same items, both systems measured.
        both = [r for r in rows if metric in r["systems"][name]
                and metric in r["systems"][compare_to]]
        got = interval([r["systems"][name][metric] - r["systems"][compare_to][metric]
                        for r in both], [r["group"] for r in both])
        if got is not None:
          diff[metric] = got
      entry[f"minus_{compare_to}"] = diff
    cell["systems"][name] = entry
  if task == "qa":
    cell["mean_answer_depth"] = float(np.mean([r["answer_depth"] for r in rows]))
  return cell


def summarize(rows: list, systems: Sequence[str], compare_to: Optional[str] = "sdtp",
              confidence: float = 0.95, resamples: int = 10000, seed: int = 0) -> dict:
  """Per task and length (and passkey depth): each system's metrics with bootstrap
  intervals (`bootstrap_interval`, articles resampled), and for every pruned system
  other than `compare_to` the paired interval of (system - compare_to) per item.

  Returns:
    {"documents": {length: cell}, "qa": {length: cell},
     "passkey": {length: {depth: cell}}}; cell: {"items", "articles", "systems":
    {name: {metric: interval, "minus_<compare_to>": {metric: interval}}}}; lengths and
    depths as strings (JSON keys).
  """
  interval = lambda v, g: bootstrap_interval(v, g, confidence, resamples, seed)
  out = {}
  for task in TASKS:
    task_rows = [r for r in rows if r["task"] == task]
    for length in sorted({r["length"] for r in task_rows}):
      at = [r for r in task_rows if r["length"] == length]
      if task == "passkey":
        out.setdefault(task, {})[str(length)] = {
            f"{d:g}": _cell([r for r in at if r["depth"] == d], systems, task, compare_to,
                            interval)
            for d in sorted({r["depth"] for r in at})}
      else:
        out.setdefault(task, {})[str(length)] = _cell(at, systems, task, compare_to,
                                                      interval)
  return out


def round_robin(items_by_set: Sequence[list]) -> list:
  """Items of several sets interleaved (the first of each set, then the second, ...),
  so that a run stopped early covers every task and length about equally."""
  out = []
  for i in range(max((len(s) for s in items_by_set), default=0)):
    out += [s[i] for s in items_by_set if i < len(s)]
  return out

