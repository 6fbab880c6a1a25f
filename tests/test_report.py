"""The tables of README and docs/ are exactly what benchmarks/results/*.json say."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests import helpers
from tpjax.results import tables
from tpjax.results import files as result_files

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_README = os.path.join(_ROOT, "README.md")
_RESULTS = os.path.join(_ROOT, result_files.DEFAULT_DIR)


# Pages README links to that another change adds.
_PENDING_PAGES = {"docs/precision.md"}


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _readme() -> str:
  return _read(_README)


def _pages() -> list:
  return [_README] + sorted(glob.glob(os.path.join(_ROOT, "docs", "*.md")))


def test_tables_of_readme_and_docs_match_the_json():
  total = 0
  for page in _pages():
    text = _read(page)
    total += text.count("<!-- report:")
    stale = tables.stale_tables(text, _RESULTS)
    assert not stale, f"{page}: tables {stale} are stale: run python -m tpjax.report"
  assert total >= 15


def test_report_check_passes_over_readme_and_docs():
  check = subprocess.run([sys.executable, "-m", "tpjax.report", "--check"],
                         capture_output=True, text=True, cwd=_ROOT)
  assert check.returncode == 0, check.stderr
  assert f"{len(_pages())} pages" in check.stdout


def test_every_result_file_of_a_known_kind_has_a_table():
  text = "".join(_read(page) for page in _pages())
  for name, data in result_files.read_all(_RESULTS).items():
    if result_files.kind_of(data):
      assert f"<!-- report:{name} -->" in text, name


def test_headline_table_is_in_readme():
  assert "<!-- report:headline.json -->" in _readme()


def test_a_headline_row_can_name_the_curve_file_its_run_is_read_from():
  def curve(accuracy):
    return {"baseline": {"workdir": "runs/base", "accuracy": 0.9,
                         "tokens_kept_per_layer": [1.0]},
            "ltp": [{"workdir": "runs/same_name", "method": "ltp", "reg_lambda": 0.1,
                     "accuracy": accuracy, "relative_flops": 0.5}]}
  measured = {"sst2_a.json": curve(0.8), "sst2_b.json": curve(0.85)}
  row = {"task": "SST-2", "method": "LTP", "run": "same_name"}
  assert "| 10.00 |" in tables.headline_table({"headline": [row]}, measured)
  named = tables.headline_table({"headline": [dict(row, curve="sst2_b.json")]}, measured)
  assert "| 5.00 |" in named


def test_readme_links_resolve_and_reach_every_docs_page():
  text = _readme()
  links = set(re.findall(r"\]\(([^)#]+)\)", text))
  for link in links - _PENDING_PAGES:
    if not link.startswith("http"):
      assert os.path.exists(os.path.join(_ROOT, link)), link
  for page in glob.glob(os.path.join(_ROOT, "docs", "*.md")):
    assert os.path.relpath(page, _ROOT) in links, page


def test_docs_links_resolve():
  for page in glob.glob(os.path.join(_ROOT, "docs", "*.md")):
    for link in re.findall(r"\]\(([^)#]+)\)", _read(page)):
      if not link.startswith("http"):
        target = os.path.normpath(os.path.join(os.path.dirname(page), link))
        assert os.path.exists(target), (page, link)


def test_pages_speak_of_the_project_only():
  for page in _pages():
    text = _read(page)
    for path in ("/work/", "/root/", "/home/", "/tmp/"):
      assert path not in text, (page, path)
    assert not re.search(r"\b[Ii]ssues? \d", text), page


def test_a_changed_measurement_makes_the_check_fail(tmp_path):
  shutil.copytree(_RESULTS, tmp_path / "results")
  readme = tmp_path / "benchmarks.md"  # the page with the benchmark tables
  shutil.copy(os.path.join(_ROOT, "docs", "benchmarks.md"), readme)
  command = [sys.executable, "-m", "tpjax.report", f"--pages={readme}",
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
  # The rewrite in this process: the real processes above and in
  # test_report_check_passes_over_readme_and_docs cover the exit codes.
  code, _, stderr = helpers.run_cli("tpjax.report", *command[3:])
  assert code == 0, stderr
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


def test_make_run_table_gives_each_stage_and_the_drop_from_fine_tuning():
  def stage(epochs, accuracy, flops, seconds):
    return {"epochs": epochs, "wall_time_s": seconds,
            "dev": {"validation": {"accuracy": accuracy, "relative_flops": flops}}}
  record = {"command": "make run", "date": "2026-12-06", "exit_code": 0,
            "machine": {"cpu": "AMD EPYC", "cores": 2}, "install_s": 60, "wall_s": 5700,
            "load_average": {"mean": 1.1, "max": 1.5, "samples": 190},
            "summary": {"stages": {"finetune": stage(1, 0.8956, 1.0, 2700),
                                   "soft": stage(0.4, 0.8800, 0.58, 1500),
                                   "hard": stage(0.5, 0.8870, 0.581, 1200)}}}
  assert result_files.kind_of(record) == "fresh_clone"
  text = tables.table_for("make_run.json", record)
  assert "| `make run` | 2026-12-06 | AMD EPYC, 2 cores | 0 | 95.0 min | 1.0 min | 1.10 / 1.50 |" in text
  assert "| finetune | 1 | 89.56 | +0.00 | 1.000 | - | - | 45.0 min |" in text
  assert "| hard | 0.5 | 88.70 | -0.86 | 0.581 | - | - | 20.0 min |" in text


def test_a_target_is_met_only_by_its_unrounded_median():
  def ratio(median):
    return {"median": median, "q25": median, "q75": median}
  record = {"orders": ["sorted"], "ratios": {
      "sorted": {"speedup_over_flops_reduction_best_unpruned": ratio(0.9496),
                 "keep_all_time_over_unpruned": ratio(1.03)},
      "batch1": {"pruned_over_unpruned_p50_per_round": ratio(1.0004)}}}
  text = tables._targets_table(record)
  assert "| speedup vs the faster unpruned path / FLOPs reduction >= 0.95 | 0.950x, missed |" in text
  assert "| keep-all time / unpruned time <= 1.03 | 1.030x, met |" in text
  assert "| batch 1: pruned / unpruned p50 <= 1 | 1.000x, missed |" in text
