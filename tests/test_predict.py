"""tpjax.predict: input order, bad lines, truncation, and the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from tests import xla_env
from tpjax.data import glue
from tpjax.training import train
from tpjax.inference import loading
from tpjax.inference import predict


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  glue_dir = helpers.write_sst2(str(tmp_path_factory.mktemp("glue")))
  config = helpers.tiny_config(glue_dir, max_steps=4)
  config.num_devices = 1
  # A hard-pruned run on one bucket is all prediction needs: two programs to compile
  # (a fine-tuning stage and a second bucket would make it eight).
  config.data.buckets = (32,)
  config.stages = ("hard",)
  config.pruning.method = "threshold"
  config.pruning.final_threshold = 0.02
  directory = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(config, directory)
  return directory


def test_bad_lines_get_their_own_output(workdir):
  predictor = predict.Predictor(loading.load_run(workdir), batch_size=4)
  lines = [b"a good film\n", b"\n", b"bad \xff\xfe bytes\n", b"   \n",
           ("word " * 500 + "\n").encode(), b"the plot is dull\n"]
  out = predictor.predict_lines(lines, first_line=10, show_kept=True)
  assert [r["line"] for r in out] == list(range(10, 16))
  assert out[1]["error"] == "empty input" and out[3]["error"] == "empty input"
  assert "invalid UTF-8" in out[2]["error"]
  assert out[4]["truncated"] and out[4]["tokens"] == 32
  assert not out[0]["truncated"]
  for r in (out[0], out[4], out[5]):
    assert r["label"] in (0, 1)
    assert abs(sum(r["probabilities"]) - 1) < 1e-5
    assert len(r["kept_per_layer"]) == predictor.run.model.config.num_hidden_layers
    assert [len(k) for k in r["kept_tokens"]] == r["kept_per_layer"]
    assert [len(k) for k in r["kept_positions"]] == r["kept_per_layer"]
    assert len(r["input_tokens"]) == r["tokens"]
    assert all(k[0] == "[CLS]" for k in r["kept_tokens"])


def test_results_do_not_depend_on_neighbours(workdir):
  predictor = predict.Predictor(loading.load_run(workdir), batch_size=4)
  lines = [b"good film\n", b"awful plot\n", b"a very dull story about the film\n"]
  together = predictor.predict_lines(lines, 1)
  for i, line in enumerate(lines):
    alone = predictor.predict_lines([line], 1)[0]
    np.testing.assert_allclose(alone["probabilities"], together[i]["probabilities"],
                               atol=1e-5)
    assert alone["kept_per_layer"] == together[i]["kept_per_layer"]


def test_pair_lines_need_two_fields():
  assert predict.parse_line(b"a\tb\n", pair=True) == (("a", "b"), None)
  assert "2 tab-separated" in predict.parse_line(b"only one\n", pair=True)[1]
  assert predict.parse_line(b"a\tb\n", pair=False) == (("a\tb", None), None)


def test_command_line_reads_stdin(workdir, tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_env.flags(), JAX_PLATFORMS="cpu")
  page = tmp_path / "kept.html"
  result = subprocess.run(
      [sys.executable, "-m", "tpjax.predict", f"--workdir={workdir}", "--input=-",
       f"--html={page}"],
      input=b"a good film\n\nthe plot\n", capture_output=True, env=env, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
  assert [r["line"] for r in rows] == [1, 2, 3]
  assert "error" in rows[1] and "label" in rows[0] and "label" in rows[2]
  assert "kept_tokens" not in rows[0]  # --html alone leaves the JSON as it was
  text = page.read_text()
  # One section per good line, each with a row per layer.
  layers = len(rows[0]["kept_per_layer"])
  assert text.count("<section>") == 2 and text.count('<tr class="layer">') == 2 * layers
  assert "line 1: a good film -&gt; label" in text


def test_benchmark_runs_every_system(workdir):
  from tpjax.inference import benchmark  # pylint: disable=g-import-not-at-top
  pytest.importorskip("transformers")
  systems = ["pruned", "unpruned", "keep_all", "hf_pytorch"]
  written = []  # what a cut run would have left on disk after each round
  # One batch of 4 (the same shape in both orders) and one latency example: each
  # engine compiles two shapes (the pruned one a third function, with positions).
  result = benchmark.benchmark(workdir, None, None, batch_size=4, rounds=2,
                               latency_examples=1, max_examples=4, systems=systems,
                               orders=["sorted", "dataset"], progress=False,
                               on_round=written.append)
  assert [w["rounds"] for w in written] == [1, 2]
  assert written[0]["rounds_planned"] == 2
  assert len(written[0]["systems"]["pruned"]["sorted"]["rounds_s"]) == 1
  assert set(result["systems"]) == set(systems)
  # The PyTorch peer (own process) computes what tpjax computes on the same batch.
  assert result["agreement"]["hf_pytorch_max_abs_logit_diff_vs_unpruned"] < 1e-4
  assert result["agreement"]["keep_all_max_abs_logit_diff_vs_unpruned"] < 1e-5
  # Relative FLOPs recounted by hand from the tokens tpjax.predict keeps in the same 4
  # dev examples: per layer, 4 d^2 n + 2 d n^2 on the n tokens entering it and
  # 2 d d_ff on the tokens it keeps.
  run = loading.load_run(workdir)
  texts = glue.load_examples("sst2", "validation", run.config.data.glue_dir).text_a[:4]
  rows = predict.Predictor(run, batch_size=4).predict_lines(
      [(t + "\n").encode() for t in texts], 1)
  n = np.array([r["tokens"] for r in rows], np.float64)  # [4]
  kept = np.array([r["kept_per_layer"] for r in rows], np.float64)  # [4, layers]
  entering = np.concatenate([n[:, None], kept[:, :-1]], axis=1)
  d, d_ff = run.model.config.hidden_size, run.model.config.intermediate_size
  macs = lambda a, f: 4 * d * d * a + 2 * d * a * a + 2 * d * d_ff * f
  want = macs(entering, kept).sum() / (kept.shape[1] * macs(n, n).sum())
  assert kept[:, -1].sum() < n.sum(), "the run must prune"
  assert result["pruning"]["relative_flops"] == pytest.approx(want, rel=1e-9)
  for order in ("sorted", "dataset"):
    ratios = result["ratios"][order]
    assert {"speedup_pruned_vs_unpruned", "keep_all_time_over_unpruned",
            "unpruned_speedup_vs_hf_pytorch"} <= set(ratios)
    assert len(result["systems"]["hf_pytorch"][order]["rounds_s"]) == 2
  # One latency example a round: the pooled p99 is the p99 of the two rounds' times.
  pruned = result["systems"]["pruned"]
  assert len(pruned["latency_round_p99_ms"]) == 2
  assert pruned["latency_p99_ms"] == pytest.approx(
      np.percentile(pruned["latency_round_p99_ms"], 99), abs=1e-3)  # rounded to 1e-3


def test_load_run_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a tpjax run"):
    loading.load_run(str(tmp_path))
