"""README's results tables are exactly what benchmarks/results/*.json say."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tpjax.results import tables
from tpjax.results import files as result_files

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_README = os.path.join(_ROOT, "README.md")
_RESULTS = os.path.join(_ROOT, result_files.DEFAULT_DIR)


def _readme() -> str:
  with open(_README, encoding="utf-8") as f:
    return f.read()


def test_readme_tables_match_the_json():
  text = _readme()
  assert text.count("<!-- report:") >= 4
  stale = tables.stale_tables(text, _RESULTS)
  assert not stale, f"README tables {stale} are stale: run python -m tpjax.report"


def test_every_curve_sweep_and_benchmark_has_a_table():
  text = _readme()
  for name, data in result_files.read_all(_RESULTS).items():
    if result_files.is_curve(data) or result_files.is_inference(data):
      assert f"<!-- report:{name} -->" in text, name


def test_a_changed_measurement_makes_the_check_fail(tmp_path):
  shutil.copytree(_RESULTS, tmp_path / "results")
  readme = tmp_path / "README.md"
  shutil.copy(_README, readme)
  command = [sys.executable, "-m", "tpjax.report", f"--readme={readme}",
             f"--results={tmp_path / 'results'}"]
  measured = sorted(result_files.inference_results(str(tmp_path / "results")))
  name = measured[0] if measured else "inference_made_up.json"
  if not measured:  # no benchmark in benchmarks/results: a made-up one with its table
    made_up = {"task": "sst2", "split": "validation", "examples": 8, "workdir": "runs/x",
               "method": "ltp", "systems": {s: {"examples_per_s": 1.0, "tokens_per_s": 9.0,
                                                "latency_p50_ms": 1.0,
                                                "latency_p99_ms": 2.0}
                                            for s in ("pruned", "unpruned")}}
    (tmp_path / "results" / name).write_text(json.dumps(made_up))
    readme.write_text(readme.read_text() + f"\n<!-- report:{name} -->\n<!-- /report -->\n")
    subprocess.run(command, check=True, capture_output=True, cwd=_ROOT)
  before = readme.read_text()
  path = tmp_path / "results" / name
  data = json.loads(path.read_text())
  data["systems"]["pruned"]["examples_per_s"] = 12345.0
  path.write_text(json.dumps(data))
  check = subprocess.run(command + ["--check"], capture_output=True, text=True,
                         cwd=_ROOT)
  assert check.returncode == 1
  assert name in check.stderr
  subprocess.run(command, check=True, capture_output=True, cwd=_ROOT)
  for picture in ("pareto_sst2.png", "throughput.png"):  # drawn beside the JSON
    assert (tmp_path / "results" / picture).stat().st_size > 10_000
  text = readme.read_text()
  assert "| pruned (compaction engine) | 12345.0 |" in text
  assert tables.stale_tables(text, str(tmp_path / "results")) == []
  # Only the table changed.
  assert len(text.splitlines()) == len(before.splitlines())


def test_marker_without_file_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.json"):
    tables.render("<!-- report:missing.json -->\n<!-- /report -->\n", str(tmp_path))


def test_kept_fractions_format():
  assert tables._fractions([1.0, 0.9994, 0.0804, 0.9996]) == "1, .999, .080, 1"
