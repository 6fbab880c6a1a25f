"""The evaluation that separates prefill pruners (tpjax/inference/sdtp_eval.py and
benchmarks/sdtp_decoder_quality.py), on known data and a tiny random decoder."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from tests import helpers
from tpjax.data import squad_docs
from tpjax.inference import sdtp_eval
from tpjax.models import decoder
from tpjax.pruning import sdtp_decoder
from tpjax.results import files as result_files
from tpjax.results import tables

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = helpers.tiny_decoder_config()
PRUNE = sdtp_decoder.Schedule(layers=(2, 4), keep=(0.7, 0.45), keep_first=2,
                              keep_last=0.1, step=8)
KEEP_ALL = sdtp_decoder.Schedule(layers=(2, 4), keep=(1.0, 1.0), keep_first=2,
                                 keep_last=0.1, step=8)


@pytest.fixture(scope="module")
def tiny():
  model = decoder.DecoderModel(TINY)
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  # Larger weights: attention peaks, so which tokens are pruned changes the output.
  return model, jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)


def _document(seed=0, length=48, continuation=12):
  ids = np.random.RandomState(seed).randint(3, 96, length + continuation).tolist()
  return sdtp_eval.Item("documents", length, "article", tuple(ids[:length]),
                        tuple(ids[length:]), continuation)


def test_bootstrap_interval_on_known_data():
  # Half zeros, half ones: mean 0.5, standard error 0.05, so the 95% interval is
  # 0.5 -+ 1.96 * 0.05 = [0.402, 0.598] (bootstrap noise well under 0.01).
  got = sdtp_eval.bootstrap_interval([0.0] * 50 + [1.0] * 50, resamples=20000)
  assert got["mean"] == 0.5 and got["n"] == 100 and got["groups"] == 100
  assert got["lo"] == pytest.approx(0.402, abs=0.01)
  assert got["hi"] == pytest.approx(0.598, abs=0.01)
  # No spread, no interval; one value is its own interval.
  assert sdtp_eval.bootstrap_interval([3.0] * 7) == {
      "mean": 3.0, "lo": 3.0, "hi": 3.0, "n": 7, "groups": 7}
  assert sdtp_eval.bootstrap_interval([]) is None
  # Seeded: the same draws give the same interval.
  assert got == sdtp_eval.bootstrap_interval([0.0] * 50 + [1.0] * 50, resamples=20000)


def test_bootstrap_resamples_whole_groups():
  rng = np.random.RandomState(0)
  values = rng.normal(size=40)
  groups = np.repeat(np.arange(10), 4)  # 10 articles of 4 items each
  grouped = sdtp_eval.bootstrap_interval(values, groups, resamples=5000, seed=3)
  # Groups of equal size: the bootstrap of the group means, draw for draw.
  means = values.reshape(10, 4).mean(1)
  direct = sdtp_eval.bootstrap_interval(means, resamples=5000, seed=3)
  assert grouped["groups"] == 10 and grouped["n"] == 40
  assert grouped["mean"] == pytest.approx(direct["mean"])
  assert grouped["lo"] == pytest.approx(direct["lo"])
  assert grouped["hi"] == pytest.approx(direct["hi"])
  # Items that move with their article: duplicating each item inside its group
  # leaves the interval as it was, where resampling items would narrow it.
  twice = sdtp_eval.bootstrap_interval(np.repeat(values, 2), np.repeat(groups, 2),
                                       resamples=5000, seed=3)
  assert twice["lo"] == pytest.approx(grouped["lo"])
  assert twice["hi"] == pytest.approx(grouped["hi"])


def test_summary_of_hand_made_rows():
  def row(group, full_em, sdtp, recency):
    return {"task": "qa", "length": 64, "group": group, "answer_depth": 0.2,
            "systems": {"full": {"nll": 1.0, "em": full_em},
                        "sdtp": {"nll": sdtp, "em": 1.0, "kl": sdtp, "top1": 1.0},
                        "recency": {"nll": recency, "em": 0.0, "kl": recency,
                                    "top1": 0.5}}}
  rows = [row("a", 1.0, 2.0, 3.0), row("a", 0.0, 2.0, 5.0), row("b", 1.0, 4.0, 4.0)]
  cell = sdtp_eval.summarize(rows, ["full", "sdtp", "recency"], resamples=100)["qa"]["64"]
  assert (cell["items"], cell["articles"]) == (3, 2)
  recency = cell["systems"]["recency"]
  assert recency["kl"]["mean"] == pytest.approx(4.0)
  assert recency["em"]["mean"] == 0.0 and cell["systems"]["sdtp"]["em"]["mean"] == 1.0
  # Exact match where full is exact: rows 0 and 2 only.
  assert cell["systems"]["sdtp"]["em_given_full"]["n"] == 2
  assert "em_given_full" not in cell["systems"]["full"]
  # Paired differences from sdtp, item by item: 1, 3, 0.
  diff = recency["minus_sdtp"]["nll"]
  assert diff["mean"] == pytest.approx(4 / 3) and diff["lo"] >= 0.0 and diff["hi"] <= 3.0
  assert "minus_sdtp" not in cell["systems"]["sdtp"]


def test_token_kl_is_kl_of_full_from_pruned():
  full = np.log(np.array([[0.5, 0.5]]))
  pruned = np.log(np.array([[0.9, 0.1]]))
  want = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)  # 0.511; reversed: 0.368
  np.testing.assert_allclose(sdtp_eval.token_kl(full, pruned), [want], rtol=1e-5)
  np.testing.assert_allclose(sdtp_eval.token_kl(full, full + 3.0), [0.0], atol=1e-7)
  np.testing.assert_array_equal(
      sdtp_eval.top1_agreement(np.array([[0, 2, 1], [3, 1, 0]]),
                               np.array([[0, 5, 1], [1, 3, 0]])), [1.0, 0.0])


def test_nothing_pruned_gives_kl_zero_and_agreement_one(tiny):
  model, params = tiny
  engines = {"full": sdtp_decoder.PrunedPrefill(model, params, None),
             "keep_all": sdtp_decoder.PrunedPrefill(model, params, KEEP_ALL,
                                                    sdtp_decoder.random_scorer,
                                                    jax.random.PRNGKey(0))}
  for seed in range(2):
    row = sdtp_eval.evaluate_item(engines, _document(seed))
    got = row["systems"]["keep_all"]
    assert got["kl"] == pytest.approx(0.0, abs=1e-6)
    assert got["top1"] == 1.0
    assert got["nll"] == pytest.approx(row["systems"]["full"]["nll"], abs=1e-5)
    assert got["kept"] == [48] * 5


def test_pruning_gives_kl_above_zero_and_same_kept_counts(tiny):
  model, params = tiny
  engines = {"full": sdtp_decoder.PrunedPrefill(model, params, None)}
  for name, fn, p in (("recency", sdtp_decoder.recency_scorer, None),
                      ("random", sdtp_decoder.random_scorer, jax.random.PRNGKey(0))):
    engines[name] = sdtp_decoder.PrunedPrefill(model, params, PRUNE, fn, p)
  row = sdtp_eval.evaluate_item(engines, _document())
  for name in ("recency", "random"):
    got = row["systems"][name]
    assert got["kl"] > 1e-3
    assert got["kept"] == [48, 48, 34, 34, 22]
  # The KL is the mean over the continuation of the logits each engine decodes.
  item = _document()
  ids = np.asarray([item.prompt])
  logits = [e.continuation_logits(e.prefill(ids, np.ones_like(ids, bool)),
                                  np.asarray([item.target]))[0]
            for e in (engines["full"], engines["recency"])]
  assert row["systems"]["recency"]["kl"] == pytest.approx(
      float(np.mean(sdtp_eval.token_kl(*logits))), rel=1e-5)


@pytest.mark.parametrize("target", sdtp_decoder.SALIENCY_TARGETS)
def test_oracle_saliency_layer_by_layer_equals_the_training_target(tiny, target):
  # Unscaled weights: the x8 model is too ill-conditioned for two float32 gradient
  # computations to agree (jit against eager alone differs by 0.2 there).
  params = decoder.init_params(tiny[0], jax.random.PRNGKey(0))
  ids = jax.numpy.asarray([_document().prompt])
  got = sdtp_eval.oracle_saliency(TINY, PRUNE, 0.1, target)(params, ids)
  want = sdtp_decoder.prompt_saliency(TINY, params, ids, PRUNE, 0.1, target=target)[0]
  assert got.shape == (2, 1, 48) and float(np.abs(want).max()) > 0
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_mask_saliency_is_the_loss_increase_of_dropping_a_token_from_attention(tiny):
  # Central differences of T as a function of one stage's keep mask (masked_prefill:
  # the mask multiplies attention from that stage's layer on), against the "mask"
  # target: minus dT/dM at M = 1, clipped at 0.
  model, _ = tiny
  params = decoder.init_params(model, jax.random.PRNGKey(0))
  ids = jax.numpy.asarray([_document().prompt])
  n = ids.shape[1]
  weights = jax.numpy.asarray(sdtp_decoder.target_weights(n, PRUNE, 0.1))[None]
  positions = jax.numpy.arange(n)[None]

  @jax.jit
  def loss(masks):
    x, _, _ = sdtp_decoder.masked_prefill(TINY, params, ids, positions,
                                          jax.numpy.ones((1, n), bool), PRUNE,
                                          lambda stage, inputs: masks[stage])
    logits = model.apply({"params": params}, x[:, :-1], method=model.head)
    nll = -jax.numpy.take_along_axis(jax.nn.log_softmax(logits, -1),
                                     ids[:, 1:, None], -1)[..., 0]
    return jax.numpy.sum(nll * weights) / jax.numpy.sum(weights)

  got = np.asarray(sdtp_decoder.prompt_saliency(TINY, params, ids, PRUNE, 0.1, norm="raw",
                                                target="mask")[0])[:, 0]
  eps, ones = 1e-2, np.ones((2, 1, n), np.float32)
  want = np.zeros_like(got)
  for stage in range(2):
    for j in range(PRUNE.keep_first, n - 5):  # the prunable tokens
      up, down = ones.copy(), ones.copy()
      up[stage, 0, j] += eps
      down[stage, 0, j] -= eps
      want[stage, j] = max(-(float(loss(up)) - float(loss(down))) / (2 * eps), 0.0)
  assert (want > 0).sum() > 5 and (want[:, PRUNE.keep_first:n - 5] == 0).sum() > 5
  assert not np.allclose(want[0], want[1])  # the later stage counts fewer layers
  np.testing.assert_allclose(got, want, atol=5e-5)  # float32 differences: ~3e-5
  with pytest.raises(ValueError, match="saliency target"):
    sdtp_decoder.prompt_saliency(TINY, params, ids, PRUNE, 0.1, target="hiden")


def test_items_are_held_out_independent_and_where_they_claim():
  tok = sdtp_eval.ByteTokenizer()
  _, evaluation = squad_docs.split(squad_docs.load_articles())
  tokens = {a.title: tok.encode(a.text) for a in evaluation}
  docs = sdtp_eval.document_items(tokens, 300, 40, 20)
  assert len({d.group for d in docs}) == len(evaluation)  # every article before a 2nd
  spans = {}
  for d in docs:  # windows of one article never overlap, so no prompt is a prefix
    start = d.info["offset"]
    assert list(d.prompt + d.target) == tokens[d.group][start:start + 320]
    assert all(start >= e or start + 320 <= s for s, e in spans.get(d.group, []))
    spans.setdefault(d.group, []).append((start, start + 320))
  with pytest.raises(ValueError, match="disjoint windows"):
    sdtp_eval.document_items(tokens, 300, 10 ** 6, 20)
  qa = sdtp_eval.qa_items(tok, evaluation, tokens, 400, 6, 16)
  for item in qa:
    assert len(item.prompt) == 400
    text = tok.decode(item.prompt)
    answer = item.info["answers"][0]
    assert tok.decode(item.target) == answer
    # The gold answer ends in the first half, and the question is in the prompt.
    assert answer in tok.decode(item.prompt[:200])
    assert item.info["answer_end_depth"] < 0.5 and item.info["question"] in text
  passkey = sdtp_eval.passkey_items(tok, tokens, 1500, 2, (0.1, 0.5, 0.9))
  assert [p.info["depth"] for p in passkey] == [0.1, 0.5, 0.9] * 2
  intro, question = len(sdtp_eval.PASSKEY_INTRO), len(sdtp_eval.PASSKEY_QUESTION)
  for p in passkey:
    assert len(p.prompt) == 1500
    text = tok.decode(p.prompt)
    needle = sdtp_eval.PASSKEY_NEEDLE.format(key=p.info["key"])
    at = text.index(needle)
    hay = text[intro:at] + text[at + len(needle):len(text) - question]
    # The share of the haystack before the needle is the depth asked (to a sentence).
    assert abs((at - intro) / len(hay) - p.info["depth"]) < 0.05
    assert text.endswith(sdtp_eval.PASSKEY_QUESTION) and text.startswith(
        sdtp_eval.PASSKEY_INTRO)
    assert tok.decode(p.target) == " " + p.info["key"]


def _benchmark(name="sdtp_decoder_quality"):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(_ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_smoke_runs_the_whole_evaluation(tmp_path):
  out = tmp_path / "eval.json"
  _benchmark().main(["--smoke", f"--out={out}"])
  data = json.loads(out.read_text())
  assert result_files.kind_of(data) == "sdtp_decoder_eval"
  systems = ["full", "sdtp", "recency", "random", "attention", "oracle"]
  assert data["systems"] == systems
  split = data["split"]
  assert split["evaluation_articles"] and split["train_articles"]
  assert not set(split["evaluation_articles"]) & set(split["train_articles"])
  assert {r["task"] for r in data["items"]} == {"documents", "qa", "passkey"}
  for row in data["items"]:  # every pruned system kept the same counts
    assert len({tuple(v["kept"]) for n, v in row["systems"].items() if n != "full"}) == 1
  summary = data["summary"]
  cells = ([c for c in summary["documents"].values()] + list(summary["qa"].values())
           + [c for d in summary["passkey"].values() for c in d.values()])
  assert [c["items"] for c in summary["documents"].values()] == [3]
  for cell in cells:
    for name, metrics in cell["systems"].items():
      for metric, ci in metrics.items():
        for d in (ci.values() if metric.startswith("minus_") else [ci]):
          assert d["lo"] <= d["mean"] + 1e-9 and d["mean"] <= d["hi"] + 1e-9, (name, metric)
  assert set(summary["documents"]["320"]["systems"]["recency"]) == {
      "kl", "top1", "nll", "minus_sdtp"}
  table = tables.table_for("eval.json", data)
  assert "KL(full ‖ pruned)" in table and "passkey retrieved at 50% depth" in table
  assert all(f"| {name} |" in table for name in systems)
  # --summarize_only rebuilds the same summary from the items.
  again = _benchmark().main(["--smoke", f"--out={out}", "--summarize_only"])
  assert again["summary"] == summary


def test_resume_continues_the_same_run_only(tmp_path):
  out = tmp_path / "eval.json"
  bench = _benchmark()
  whole = bench.main(["--smoke", f"--out={out}", "--tasks=documents"])
  partial = dict(whole, items=whole["items"][:1])
  del partial["summary"], partial["seconds"]
  out.write_text(json.dumps(partial))
  resumed = bench.main(["--smoke", f"--out={out}", "--tasks=documents", "--resume"])
  assert resumed["resumed"][0]["at_item"] == 1
  strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  assert strip(resumed["items"]) == strip(whole["items"])
  assert resumed["summary"] == whole["summary"]
  # Another run's file is refused with nothing overwritten: other settings, or a row
  # whose prompt is not this run's item.
  before = out.read_text()
  with pytest.raises(SystemExit, match="another settings"):
    bench.main(["--smoke", f"--out={out}", "--tasks=documents", "--continuation=4",
                "--resume"])
  assert out.read_text() == before
  partial["items"][0]["prompt_sha1"] = "0" * 40
  out.write_text(json.dumps(partial))
  with pytest.raises(SystemExit, match="another prompt"):
    bench.main(["--smoke", f"--out={out}", "--tasks=documents", "--resume"])
  assert json.loads(out.read_text()) == partial


def test_extra_predictors_are_systems_of_their_own(tmp_path):
  # Another set of predictors (say the other recipe's) evaluated beside `sdtp` on the
  # same prompts: its own decisions, its file's hash recorded.
  bench = _benchmark()
  other = sdtp_decoder.init_predictors(bench.TINY, bench.TINY_SCHEDULE,
                                       jax.random.PRNGKey(7))
  sdtp_decoder.save_predictors(str(tmp_path / "other"), other, bench.TINY_SCHEDULE)
  out = tmp_path / "eval.json"
  data = bench.main(["--smoke", f"--out={out}", "--tasks=documents",
                     "--systems=full,sdtp,other", "--compare_to=other",
                     f"--extra_predictors=other:{tmp_path / 'other'}"])
  assert data["systems"] == ["full", "sdtp", "other"]
  digest = sdtp_decoder.load_predictors(str(tmp_path / "other"), bench.TINY)[2]["sha256"]
  assert data["extra_predictors"] == {"other": {"workdir": str(tmp_path / "other"),
                                                "sha256": digest}}
  kl = [[r["systems"][n]["kl"] for r in data["items"]] for n in ("sdtp", "other")]
  assert kl[0] != kl[1]
  assert "minus_other" in data["summary"]["documents"]["320"]["systems"]["sdtp"]
  with pytest.raises(SystemExit, match="not name:workdir"):
    bench.main(["--smoke", f"--out={out}", "--extra_predictors=recency:somewhere"])


def test_find_span_locates_the_needle():
  assert sdtp_eval.find_span([5, 1, 2, 3, 1, 2], [1, 2]) == (1, 3)
  with pytest.raises(ValueError):
    sdtp_eval.find_span([5, 1, 2], [2, 1])


def test_kept_profile_says_where_each_pruner_keeps_tokens(tmp_path):
  """benchmarks/sdtp_decoder_kept.py --smoke: recency's kept share per fifth is exactly
  the first keep_first tokens plus the most recent ones; every system's fifths add up
  to the last stage's kept count; the table comes from the file."""
  out = tmp_path / "kept.json"
  data = _benchmark("sdtp_decoder_kept").main(["--smoke", f"--out={out}"])
  assert result_files.kind_of(json.loads(out.read_text())) == "sdtp_decoder_kept"
  schedule = data["schedule"]
  n = 320
  kept = int(sdtp_decoder.kept_count(np.array([n]), schedule["keep"][-1],
                                     schedule["keep_first"], schedule["keep_last"])[0])
  alive = np.zeros(n, bool)
  alive[:schedule["keep_first"]] = True
  alive[n - (kept - schedule["keep_first"]):] = True
  expected = [alive[i * 64:(i + 1) * 64].mean() for i in range(5)]
  rows = [r for r in data["items"] if r["task"] == "documents"]
  assert rows
  for row in rows:
    np.testing.assert_allclose(row["systems"]["recency"]["fifths"], expected)
    for shares in row["systems"].values():
      assert round(64 * sum(shares["fifths"])) == kept
  needles = [r["systems"]["sdtp"]["needle"] for r in data["items"] if r["task"] == "passkey"]
  assert needles and all(len(v) == len(schedule["layers"]) for v in needles)
  table = tables.table_for("kept.json", data)
  assert "fifth 5 kept at layer 4" in table and "needle at layer 2" in table
