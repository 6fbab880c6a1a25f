"""Long documents and questions from SQuAD v1.1 dev, for decoder prefill pruning (SDTP).

Each of the 48 dev articles becomes one document: its paragraphs joined with blank
lines (several thousand tokens each). Articles are split by index parity: even indices
train (the prediction modules), odd indices evaluate, so no evaluation article is ever
seen in training. Everything is read from the local JSON; nothing is downloaded.

    articles = squad_docs.load_articles()            # 48 Article
    train, evaluation = squad_docs.split(articles)   # 24 / 24, disjoint by title
"""

import collections
import dataclasses
import json
import re
import string
from typing import Callable, Sequence

DEFAULT_PATH = "/work/shared/data/squad/dev-v1.1.json"
SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Question:
  question: str
  answers: tuple[str, ...]
  paragraph: int  # index of the paragraph that holds the answer
  answer_start: int = -1  # character offset of answers[0] in that paragraph


@dataclasses.dataclass(frozen=True)
class Article:
  title: str
  paragraphs: tuple[str, ...]
  questions: tuple[Question, ...]

  @property
  def text(self) -> str:
    return SEPARATOR.join(self.paragraphs)


def load_articles(path: str = DEFAULT_PATH) -> list[Article]:
  """Every article of a SQuAD v1.1 JSON file, in file order."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)["data"]
  except FileNotFoundError as e:
    raise FileNotFoundError(f"No SQuAD v1.1 JSON at {path!r} (expected dev-v1.1.json); "
                            "pass its path.") from e
  articles = []
  for art in data:
    paragraphs, questions = [], []
    for i, par in enumerate(art["paragraphs"]):
      context = par["context"]
      paragraphs.append(context.strip())
      shift = len(context) - len(context.lstrip())  # offsets count the stripped space
      for qa in par["qas"]:
        start = qa["answers"][0]["answer_start"] - shift if qa["answers"] else -1
        questions.append(Question(qa["question"].strip(),
                                  tuple(a["text"] for a in qa["answers"]), i, start))
    articles.append(Article(art["title"], tuple(paragraphs), tuple(questions)))
  return articles


def split(articles: Sequence[Article]) -> tuple[list[Article], list[Article]]:
  """(train, evaluation): even and odd article indices; disjoint by construction."""
  train = [a for i, a in enumerate(articles) if i % 2 == 0]
  evaluation = [a for i, a in enumerate(articles) if i % 2 == 1]
  assert not {a.title for a in train} & {a.title for a in evaluation}
  return train, evaluation


def qa_context(article: Article, question: Question, budget: int,
               count_tokens: Callable[[str], int]) -> str:
  """The answer's paragraph plus its neighbours (alternately after, before), in article
  order, as long as the joined text stays within `budget` tokens."""
  chosen = [question.paragraph]
  used = count_tokens(article.paragraphs[question.paragraph])
  lo, hi, after = question.paragraph - 1, question.paragraph + 1, True
  while lo >= 0 or hi < len(article.paragraphs):
    take_hi = hi < len(article.paragraphs) and (after or lo < 0)
    index = hi if take_hi else lo
    cost = count_tokens(article.paragraphs[index]) + 2
    if used + cost > budget:
      break
    used += cost
    chosen.append(index)
    if take_hi:
      hi += 1
    else:
      lo -= 1
    after = not after
  return SEPARATOR.join(article.paragraphs[i] for i in sorted(chosen))


def qa_prompt(context: str, question: str) -> str:
  """The user message for extractive QA with a chat model."""
  return (f"{context}\n\nAnswer the question with a short span copied from the text "
          f"above.\nQuestion: {question}")


def _normalize(text: str) -> str:
  """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
  text = "".join(c for c in text.lower() if c not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def answer_offset(article: Article, question: Question) -> int:
  """Character offset of the question's first gold answer in `article.text`, or -1
  when the file gives none."""
  if question.answer_start < 0:
    return -1
  before = sum(len(p) + len(SEPARATOR) for p in article.paragraphs[:question.paragraph])
  return before + question.answer_start


def exact_match(prediction: str, answers: Sequence[str]) -> float:
  """SQuAD exact match (0 or 1): the normalised prediction equals a normalised answer."""
  return float(any(_normalize(prediction) == _normalize(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
  """SQuAD token F1 (0..1) of a prediction, the best over the gold answers."""
  pred = _normalize(prediction).split()
  best = 0.0
  for answer in answers:
    gold = _normalize(answer).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common:
      precision, recall = common / len(pred), common / len(gold)
      best = max(best, 2 * precision * recall / (precision + recall))
    elif not pred and not gold:
      best = max(best, 1.0)
  return best
