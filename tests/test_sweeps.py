"""Sweeps and curves choose on the held-out selection slice, never on dev.

Each test gives the slice and dev opposite preferences (the slice favours one setting
or run, dev another) and asserts the slice's choice is taken and dev is evaluated only
at it. The tiny run holds a slice out; the sweeps reproduce the same slice from its
config (`batching.load_train`).
"""

import json
import os
import shutil

import pytest

from tests import helpers
from tpjax.data import batching
from tpjax.inference import loading
from tpjax.results import curves
from tpjax.results import files as result_files
from tpjax.results import tables
from tpjax.training import selection
from tpjax.training import sweep
from tpjax.training import train

SPLIT = selection.SPLIT


def _config(glue_dir):
  config = helpers.tiny_config(glue_dir, max_steps=2, eval_every_steps=2)
  config.num_devices = 1
  config.data.per_device_batch_size = 8
  # One bucket length: the run and every sweep of it (which evaluates with the run's
  # buckets) compile one program per setting, not two.
  config.data.buckets = (32,)
  config.data.selection_fraction = 0.25
  config.data.selection_seed = 3
  return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A tiny fine-tune (2 steps) holding a quarter of its training set out."""
  glue_dir = helpers.write_sst2(str(tmp_path_factory.mktemp("glue")), n_train=48,
                                n_dev=16)
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train.train_and_evaluate(_config(glue_dir), workdir)
  return workdir, summary, glue_dir


def _split_of(kwargs) -> str:
  return kwargs["where"].rsplit(", ", 1)[-1]


def _opposite_preferences(monkeypatch):
  """train.evaluate, real, except its accuracy: on the slice the fewer FLOPs the more
  accurate, on dev the more FLOPs. Returns the list of evaluated splits."""
  real, splits = train.evaluate, []

  def fake(*args, **kwargs):
    result = real(*args, **kwargs)
    split = _split_of(kwargs)
    splits.append(split)
    flops = result["relative_flops"]
    result["accuracy"] = 1.0 - flops / 2 if split == SPLIT else flops / 2
    return result

  monkeypatch.setattr(train, "evaluate", fake)
  return splits


# ---------------------------------------------------------------- the choosing rule


def test_choose_reads_only_the_slice():
  candidates = [
      {SPLIT: {"accuracy": 0.80, "relative_flops": 0.50}, "accuracy": 0.99},
      {SPLIT: {"accuracy": 0.85, "relative_flops": 0.60}, "accuracy": 0.10},
      {SPLIT: {"accuracy": 0.90, "relative_flops": 0.80}, "accuracy": 0.10},
      {SPLIT: {"accuracy": 0.85, "relative_flops": 0.55}, "accuracy": 0.10}]
  picks = selection.choose(candidates, "accuracy", [0.4, 0.55, 0.65, None])
  # nothing fits 0.4; a tie at 0.85 goes to the fewer FLOPs
  assert picks == [(0.55, 3), (0.65, 3), (None, 2)]


def test_choose_and_report_takes_the_slice_choice_and_evaluates_dev_there_only():
  grid = [{"k": k} for k in (0.9, 0.5, 0.2)]
  flops = {0: 0.9, 1: 0.6, 2: 0.4}
  on_slice = {0: 0.70, 1: 0.80, 2: 0.60}   # the slice prefers k=0.5 within 0.7
  on_dev = {0: 0.95, 1: 0.50, 2: 0.90}     # dev would prefer k=0.2 within 0.7
  calls = []

  def evaluate(i, split):
    calls.append((i, split))
    table = on_slice if split == SPLIT else on_dev
    return {"accuracy": table[i], "relative_flops": flops[i]}

  grid_rows, rows = sweep.choose_and_report(grid, evaluate, "accuracy", [0.7],
                                            ["validation"])
  assert [r["k"] for r in rows] == [0.5]
  assert rows[0]["accuracy"] == 0.50 and rows[0][SPLIT]["accuracy"] == 0.80
  assert rows[0]["flops_levels"] == [0.7]
  assert calls == [(0, SPLIT), (1, SPLIT), (2, SPLIT), (1, "validation")]
  assert [g[SPLIT]["accuracy"] for g in grid_rows] == [0.70, 0.80, 0.60]
  assert all("validation" not in g for g in grid_rows)


# ------------------------------------------------------------- sweeps of a tiny run


def test_the_sweep_holds_out_the_slice_its_run_held_out(tiny_run):
  workdir, summary, _ = tiny_run
  run = loading.load_run(workdir, stage="finetune")
  evaluator = sweep.Evaluator(run, workdir)
  record = {k: v for k, v in summary["selection"].items() if k != "metrics"}
  assert evaluator.record == record and record["examples"] == 12
  everything = batching.load_split(run.config, run.tokenizer, "train", None)
  held = batching.selection_indices(len(everything), 0.25, 2000, seed=3)
  as_rows = lambda data: [tuple(x.tolist()) for x in data.ids]
  assert as_rows(evaluator.data[SPLIT]) == as_rows(batching.subset(everything, held))


def test_training_free_sweep_chooses_on_the_slice(tiny_run, monkeypatch):
  workdir, summary, _ = tiny_run
  splits = _opposite_preferences(monkeypatch)
  result = sweep.training_free(workdir, "topk", [0.8, 0.1], [1], levels=[None])
  grid = result["grid"]
  flops = [g[SPLIT]["relative_flops"] for g in grid]
  assert flops[1] < flops[0], "the tiny run's settings must differ in FLOPs"
  chosen = [r for r in result["rows"] if r["method"] == "topk"]
  # the slice favours the fewer FLOPs (k=0.1); dev would have taken k=0.8
  assert [r["keep_rate"] for r in chosen] == [0.1]
  assert chosen[0]["flops_levels"] == [None]
  assert chosen[0][SPLIT] == grid[1][SPLIT]
  # every setting on the slice, then dev once for the choice and once unpruned
  assert splits == [SPLIT] * 2 + ["validation", SPLIT, "validation"]
  assert result["selected_on"] == SPLIT
  assert result["selection"] == {k: v for k, v in summary["selection"].items()
                                 if k != "metrics"}


def test_training_free_sweep_reports_the_baseline_as_training_did(tiny_run):
  workdir, summary, _ = tiny_run
  result = sweep.training_free(workdir, "threshold", [0.2], levels=[None])
  unpruned = result["rows"][0]
  assert unpruned["method"] == "none"
  assert unpruned["accuracy"] == summary["dev"]["validation"]["accuracy"]
  assert unpruned[SPLIT]["accuracy"] == summary["selection"]["metrics"]["accuracy"]
  assert [g["final_threshold"] for g in result["grid"]] == [0.2]
  assert result_files.kind_of(result) == "sweep"
  assert "held-out selection slice (12 of 48" in tables.sweep_table(result)


def test_a_sweep_chosen_on_f1_shows_dev_f1_beside_accuracy():
  row = {"method": "threshold", "final_threshold": 0.01, "flops_levels": [0.65],
         "selection": {"f1": 0.9, "relative_flops": 0.6}, "accuracy": 0.75, "f1": 0.8125,
         "relative_flops": 0.6, "tokens_kept_per_layer": [1.0, 0.5]}
  unpruned = dict(row, method="none", final_threshold=None, flops_levels=None,
                  accuracy=0.7, f1=0.875, relative_flops=1.0, tokens_kept_per_layer=[1.0, 1.0])
  data = {"task": "mrpc", "metric": "f1", "selected_on": SPLIT, "method": "threshold",
          "selection": {"split": SPLIT, "fraction": 0.1, "seed": 0, "examples": 10,
                        "train_examples": 90},
          "grid": [row], "rows": [unpruned, row],
          "baseline": {"run": "base", "workdir": "runs/base", "epochs": 10}}
  text = tables.sweep_table(data)
  assert "| dev accuracy | dev f1 |" in text
  assert "| 70.00 | 87.50 | 1.000 |" in text and "| 75.00 | 81.25 | 0.600 |" in text


def test_a_baseline_records_its_slice_curve_and_load(tiny_run, tmp_path):
  workdir, summary, _ = tiny_run
  load_log = tmp_path / "load.log"
  load_log.write_text("1.5\n2.5\n0.5\n")
  entry = curves.baseline_entry("sst2", workdir, "cmd", load_log=str(load_log))
  # the tiny run judges the slice once, at its last step (2)
  assert entry["slice_curve"] == [[2, summary["selection"]["metrics"]["accuracy"]]]
  assert entry["load_average"] == {"samples": 3, "mean": 1.5, "max": 2.5}
  # the table marks the first best evaluation, the one training kept
  entry["slice_curve"] = [[10, 0.5], [20, 0.75], [30, 0.75], [40, 0.625]]
  text = tables.baselines_table({"baselines": {"sst2": entry}}, {})
  assert "10: 50.00, **20: 75.00**, 30: 75.00, 40: 62.50" in text
  assert "(load 1.5)" in text


def test_sdtp_sweep_chooses_on_the_slice(tiny_run, monkeypatch):
  workdir, _, _ = tiny_run
  run = loading.load_run(workdir, stage="finetune", pruning_overrides={"method": "sdtp"})
  splits = _opposite_preferences(monkeypatch)
  result = sweep.sdtp_ratios(workdir, [0.9, 0.5], levels=[None], run=run)
  flops = [g[SPLIT]["relative_flops"] for g in result["grid"]]
  assert flops[1] < flops[0]
  assert [p["sdtp_keep_ratio"] for p in result["points"]] == [0.5]
  assert splits == [SPLIT, SPLIT, "validation"]
  assert result_files.kind_of(result) == "ratios"
  assert "2 ratios tried" in tables.ratios_table(result)


def test_top_rules_choose_on_the_slice(tiny_run, monkeypatch):
  workdir, _, _ = tiny_run
  run = loading.load_run(workdir, stage="finetune", pruning_overrides={"method": "top"})
  states = {"latest": (2, run.params), "best": (1, run.params)}
  real, splits = train.evaluate, []

  def fake(*args, **kwargs):  # the slice favours best/reference, dev latest/expected
    result = real(*args, **kwargs)
    split = _split_of(kwargs)
    splits.append(split)
    best_reference = "'best'" in kwargs["where"] and "'reference'" in kwargs["where"]
    result["accuracy"] = float(best_reference == (split == SPLIT))
    result["relative_flops"] = 0.5
    return result

  monkeypatch.setattr(train, "evaluate", fake)
  result = sweep.top_rules(workdir, budget=0.6, states=states, run=run)
  chosen = [r for r in result["rows"] if r.get("chosen")]
  assert [(r["checkpoint"], r["rule"]) for r in chosen] == [("best", "reference")]
  assert splits == [SPLIT] * 4 + ["validation"]
  assert all("accuracy" not in r for r in result["rows"] if not r.get("chosen"))
  assert result_files.kind_of(result) == "rules"
  assert "chosen" in tables.rules_table(result)


def test_a_run_that_chose_on_dev_cannot_be_swept(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  other = str(tmp_path / "dev_selected")  # the same run, as if it held nothing out
  shutil.copytree(workdir, other)
  with open(os.path.join(other, "config.json")) as f:
    config = json.load(f)
  config["data"]["selection_fraction"] = 0.0
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="chose its checkpoints on dev"):
    sweep.training_free(other, "topk", [0.5])
  del config["data"]["selection_fraction"]  # a config from before the slice
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="predates the slice"):
    sweep.training_free(other, "topk", [0.5])


def test_init_from_another_slice_is_refused(tiny_run, tmp_path):
  workdir, _, glue_dir = tiny_run
  config = _config(glue_dir)
  config.init_from = workdir
  config.data.selection_seed = 4
  with pytest.raises(ValueError, match="selection_seed 3 there, 4 here"):
    train.train_and_evaluate(config, str(tmp_path / "other_slice"))
  with open(os.path.join(workdir, "config.json")) as f:
    source = json.load(f)
  config.data.selection_seed = 3
  selection.check_init_from(config, source, workdir)  # the same slice: accepted
  config.data.selection_seed = 4
  config.data.selection_fraction = 0.0
  selection.check_init_from(config, source, workdir)  # chooses on dev: not checked


# ------------------------------------------------- curves of learned runs (no training)


def _summary(task, init_from, slice_acc, slice_flops, dev_acc, dev_flops, chosen_on=SPLIT,
             lam=0.05, seed=0):
  record = {"split": chosen_on, "fraction": 0.1, "max_examples": 2000, "seed": seed,
            "examples": 100, "train_examples": 900,
            "metrics": {"accuracy": slice_acc, "relative_flops": slice_flops,
                        "tokens_kept_per_layer": [1.0]}}
  return {"task": task, "method": "ltp" if init_from else "none",
          "dev": {"validation": {"accuracy": dev_acc, "relative_flops": dev_flops,
                                 "tokens_kept_per_layer": [1.0]}},
          "selection": record, "stages": {"soft": {"epochs": 1.0}, "hard": {"epochs": 1.0}},
          "wall_time_s": 10.0,
          "config": {"init_from": init_from, "pruning": {"reg_lambda": lam}}}


def _write_run(path, summary):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)
  return str(path)


@pytest.fixture
def learned_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  base = _write_run("runs/base", _summary("sst2", "", 0.9, 1.0, 0.9, 1.0))
  results = tmp_path / "results"
  results.mkdir()
  (results / result_files.BASELINES).write_text(json.dumps(
      {"baselines": {"sst2": {"run": "base", "workdir": base, "epochs": 3}}}))
  # a: best on the slice within 0.7; b: best on dev within 0.7; c: over the level
  runs = {"a": _write_run("runs/a", _summary("sst2", base, 0.88, 0.60, 0.80, 0.61, lam=1)),
          "b": _write_run("runs/b", _summary("sst2", base, 0.85, 0.65, 0.89, 0.64, lam=2)),
          "c": _write_run("runs/c", _summary("sst2", base, 0.89, 0.80, 0.90, 0.79, lam=3))}
  return base, runs, str(results)


def test_curve_keeps_the_run_the_slice_prefers_per_level(learned_runs):
  base, runs, results = learned_runs
  curve = curves.collect("sst2", {"ltp": list(runs.values())}, levels=[0.7, 0.9],
                         results_dir=results)
  assert [(p["reg_lambda"], p["flops_levels"]) for p in curve["ltp"]] == [
      (1, [0.7]), (3, [0.9])]
  assert curve["baseline"]["run"] == "base" and curve["selected_on"] == SPLIT
  every = curves.collect("sst2", {"ltp": list(runs.values())}, results_dir=results)
  assert [p["reg_lambda"] for p in every["ltp"]] == [1, 2, 3]  # no levels: no choice
  assert "Chosen on the held-out selection slice (100 of 1000" in tables.curve_table(curve)


def test_curve_shows_each_runs_slice_evaluations_stage_by_stage(learned_runs):
  base, runs, results = learned_runs
  evals = {"soft": [(5, 0.5, 0.8), (10, 0.75, 0.7)], "hard": [(0, 0.75, 0.7), (5, 0.625, 0.72)]}
  for stage, rows in evals.items():
    os.makedirs(os.path.join(runs["a"], stage))
    with open(os.path.join(runs["a"], stage, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 4, "split": "train", "loss": 1.0}) + "\n")
      for step, acc, flops in rows:
        f.write(json.dumps({"step": step, "split": f"eval_{SPLIT}", "accuracy": acc,
                            "relative_flops": flops}) + "\n")
        f.write(json.dumps({"step": step, "split": "eval_validation", "accuracy": 0.0,
                            "relative_flops": flops}) + "\n")
  curve = curves.collect("sst2", {"ltp": [runs["a"], runs["b"]]}, results_dir=results)
  # the summary's stage order (soft, then hard), the slice only, dev never
  assert curve["ltp"][0]["slice_curve"] == [["soft", 5, 0.5, 0.8], ["soft", 10, 0.75, 0.7],
                                           ["hard", 0, 0.75, 0.7], ["hard", 5, 0.625, 0.72]]
  assert curve["ltp"][1]["slice_curve"] == []  # no metrics files: no curve, no error
  text = tables.curve_table(curve)
  assert ("| LTP λ=1 | soft 5: 50.00 / 0.800, soft 10: 75.00 / 0.700, hard 0: 75.00 / "
          "0.700, hard 5: 62.50 / 0.720 |") in text
  assert "| LTP λ=2 |" in text.split("held-out slice per evaluation")[0]  # main table only
  assert "| slice accuracy / FLOPs | dev accuracy | drop |" in text
  assert "| 88.00 / 0.600 | 80.00 |" in text


def test_curve_carries_points_of_gone_runs_only_from_the_same_baseline(learned_runs):
  base, runs, results = learned_runs
  earlier = os.path.join(results, "sst2_curve.json")
  with open(earlier, "w") as f:
    json.dump(curves.collect("sst2", {"ltp": [runs["a"], runs["b"]]}, levels=[0.7],
                             results_dir=results), f)
  shutil.rmtree(runs["a"])  # a new checkout: run a is gone, its point is on file
  curve = curves.collect("sst2", {"ltp": [runs["b"], runs["c"]], "top": [runs["c"]]},
                         results_dir=results, earlier=[earlier])
  assert [(p["reg_lambda"], p.get("carried_from")) for p in curve["ltp"]] == [
      (1, earlier), (2, None), (3, None)]  # b named again: its fresh point, not the old
  assert "flops_levels" not in curve["ltp"][0]
  assert [p["reg_lambda"] for p in curve["top"]] == [3]
  assert "no longer on disk; the baseline's slice and dev results are those they were " \
      "measured against): LTP λ=1.\n" in tables.curve_table(curve)
  with open(earlier) as f:
    data = json.load(f)
  data["baseline"]["accuracy"] = 0.91  # a rerun baseline that did not reproduce
  with open(earlier, "w") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match="another baseline .*accuracy 0.91 there, 0.9 here"):
    curves.collect("sst2", {}, results_dir=results, earlier=[earlier])


def test_curve_refuses_dev_choices_and_other_baselines(learned_runs):
  base, _, results = learned_runs
  dev = _write_run("runs/dev", _summary("sst2", base, 0.8, 0.6, 0.8, 0.6,
                                        chosen_on="validation"))
  with pytest.raises(ValueError, match="chose its checkpoints on dev"):
    curves.collect("sst2", {"ltp": [dev]}, results_dir=results)
  other = _write_run("runs/other_base", _summary("sst2", "", 0.9, 1.0, 0.9, 1.0))
  elsewhere = _write_run("runs/elsewhere", _summary("sst2", other, 0.8, 0.6, 0.8, 0.6))
  with pytest.raises(ValueError, match="not from the sst2 baseline"):
    curves.collect("sst2", {"ltp": [elsewhere]}, results_dir=results)
  reslice = _write_run("runs/reslice", _summary("sst2", base, 0.8, 0.6, 0.8, 0.6, seed=1))
  with pytest.raises(ValueError, match="another slice"):
    curves.collect("sst2", {"ltp": [reslice]}, results_dir=results)
  old_sweep = {"workdir": base, "method": "topk", "rows": []}
  path = os.path.join(results, "old_sweep.json")
  with open(path, "w") as f:
    json.dump(old_sweep, f)
  with pytest.raises(ValueError, match="chose its settings on dev"):
    curves.collect("sst2", {}, sweeps=[path], results_dir=results)


# ------------------------------------------------------- one baseline per task


def test_plots_of_a_task_use_its_one_baseline_only(tmp_path):
  def curve(run, epochs, accuracy):
    return {"baseline": {"workdir": f"runs/{run}", "epochs": epochs, "accuracy": 0.9,
                         "relative_flops": 1.0, "tokens_kept_per_layer": [1.0]},
            "ltp": [{"workdir": "runs/x", "method": "ltp", "reg_lambda": 0.1,
                     "accuracy": accuracy, "relative_flops": 0.6,
                     "tokens_kept_per_layer": [1.0]}]}
  (tmp_path / "sst2_curve_a.json").write_text(json.dumps(curve("ft", 0.5, 0.81)))
  (tmp_path / "sst2_curve_b.json").write_text(json.dumps(curve("ft", 1, 0.82)))
  (tmp_path / "sst2_curve_c.json").write_text(json.dumps(curve("long", 3, 0.83)))
  (tmp_path / result_files.BASELINES).write_text(json.dumps(
      {"baselines": {"sst2": {"run": "ft", "workdir": "runs/ft", "epochs": 0.5}}}))
  points = result_files.accuracy_points(str(tmp_path), "sst2")
  assert sorted(p.accuracy for p in points) == [0.81, 0.9]
  assert {p.source for p in points} == {"sst2_curve_a.json"}
  assert all(p.selected_on == selection.DEV for p in points)  # made before the slice
  measured = result_files.read_all(str(tmp_path))
  text = tables.curve_table(measured["sst2_curve_b.json"], "sst2_curve_b.json", measured)
  assert "not the task's baseline (ft 0.5 epochs)" in text
  assert "chosen on dev" in text
