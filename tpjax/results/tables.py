"""The results tables of README and docs/, and README's pictures, from the JSON files.

Each generated table sits in README.md or a page under docs/ between two marker
comments naming its file in benchmarks/results/:

    <!-- report:inference_sst2_ltp_lam0.05.json -->
    ...table...
    <!-- /report -->

The file's kind (`files.kind_of`, told by a key only that kind has) picks the table:
  curve      trained runs: accuracy, drop, FLOPs, tokens kept per layer; with the hard
             stage's FLOPs budget when the runs record their soft stage's end; chosen
             on the slice: the slice metric, dev F1 (MRPC) and each run's slice
             evaluations too;
  sweep      training-free pruning of one run over a grid of settings;
  inference  throughput and latency per system, the per-round speed ratios, then each
             speed target of docs/benchmarks.md with its measured median;
  ratios     one trained SDTP run at other keep ratios (accuracy, F1, tokens pruned);
  rules      one ToP run's weights under both inference rules;
  decoder_speed, sdtp_decoder_speed, sdtp_decoder_training, sdtp_decoder_kept,
  engine_designs, train_speed  one table each, from the script of the same name;
  fresh_clone  `make run` / `make test` timed on a fresh clone, and make run's stages;
  sdtp_decoder_eval  `benchmarks/sdtp_decoder_quality.py`: per task, every
             system's metrics with 95% bootstrap intervals;
  headline   method x task: baseline accuracy, drop, relative FLOPs and measured
             speedup, each looked up in the curve and benchmark files;
  baselines  the one baseline run of each task, its command and dev result.
Curve, sweep, ratios and rules tables end with a line saying where their choices were
made: on the held-out selection slice (its size and seed), or on dev for files made
before the slice existed; a curve or sweep measured against another baseline than its
task's says so in its first row or header.
"""

import os
import re

import numpy as np

from tpjax.data import glue
from tpjax.results import files as result_files
from tpjax.results import plots
from tpjax.training import selection

BLOCK = re.compile(
    r"(<!-- report:(?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL)


def _table(header: list, rows: list) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
  return f"{100 * value:.2f}"


def _fractions(values: list) -> str:
  """Kept fractions as in '1, .995, .669': 1 for all kept, else 3 decimals."""
  return ", ".join("1" if v >= 0.9995 else f"{v:.3f}".lstrip("0") for v in values)


def _epochs(epochs) -> str:
  return f" {epochs:g} epoch{'s' * (epochs != 1)}" if isinstance(epochs, (int, float)) else ""


def _baseline_label(base: dict) -> str:
  """'fine-tuned 0.5 epoch (sst2_ft), unpruned', from what the file records."""
  run = base.get("run") or os.path.basename(os.path.normpath(base.get("workdir", "")))
  return ("fine-tuned" + _epochs(base.get("epochs")) + (f" ({run})" if run else "")
          + ", unpruned")


def _other_baseline(name: str, data: dict, measured: dict) -> str:
  """', not the task's baseline (sst2_ft, 0.5 epochs)' when a curve or sweep file
  compares against another run than its task's one baseline; else ''."""
  entry = _baselines(measured).get(result_files.task_of(name, data))
  if not entry or result_files.uses_baseline(data, entry):
    return ""
  return f", not the task's baseline ({entry['run']}{_epochs(entry.get('epochs'))})"


def _baselines(measured: dict) -> dict:
  return (measured.get(result_files.BASELINES) or {}).get("baselines", {})


def _chosen_note(data: dict) -> str:
  """The line under a table saying where its checkpoints and settings were chosen."""
  if result_files.selected_on(data) != selection.SPLIT:
    return ("\nMade before the held-out selection slice: checkpoints and settings "
            "chosen on dev.\n")
  record = data["selection"]
  total = record["examples"] + record["train_examples"]
  return (f"\nChosen on the held-out selection slice ({record['examples']} of {total} "
          f"training examples, fraction {record['fraction']:g}, seed {record['seed']}); "
          "dev evaluated once, at the choice.\n")


def _run_label(series: str, p: dict) -> str:
  """'LTP λ=0.05': a learned run's series and setting."""
  return f"{series} {result_files.setting_label(p)}".strip()


def _runs_by_flops(data: dict):
  """(series, run point) of a curve file's learned runs, most FLOPs first per series."""
  for series, runs in result_files.curve_runs(data):
    for p in sorted(runs, key=lambda p: p["relative_flops"], reverse=True):
      yield series, p


def _budget_table(data: dict) -> str:
  """Soft stage's end against what the hard stage handed over, per LTP run."""
  rows = []
  for series, runs in result_files.curve_runs(data):
    for p in runs:
      if "soft_accuracy" not in p:
        continue
      wall = p.get("wall_time_s", {})
      rows.append([_run_label(series, p),
                   f"{_pct(p['soft_accuracy'])} / {p['soft_relative_flops']:.3f}",
                   f"{_pct(p['accuracy'])} / {p['relative_flops']:.3f} "
                   f"(drift {p.get('flops_drift', 0):+.3f})",
                   f"{wall.get('soft', '-')} + {wall.get('hard', '-')} s"])
  if not rows:
    return ""
  return "\n" + _table(["run", "soft end: accuracy / FLOPs",
                        "hard, handed over: accuracy / FLOPs",
                        "wall time soft + hard"], rows)


def _level_list(levels) -> str:
  """'0.55, 0.65' for the FLOPs levels a setting was chosen at ('any': unbounded)."""
  return ", ".join("any" if v is None else f"{v:g}" for v in levels or [])


def _levels(p: dict) -> str:
  """' (≤ 0.55, 0.65)' after a curve point chosen at those FLOPs levels; else ''."""
  levels = p.get("flops_levels")
  return f" (≤ {_level_list(levels)})" if levels else ""


def curve_table(data: dict, name: str = "", measured: dict = None) -> str:
  """Every trained run of a curve file against the unpruned run they started from.

  A file chosen on the held-out slice also shows each row's slice metric and FLOPs,
  dev's value of a task metric other than accuracy (MRPC: F1), and each run's slice
  evaluations in a second table."""
  base = data["baseline"]
  on_slice = result_files.selected_on(data) == selection.SPLIT
  metric = data.get("metric", "accuracy")
  dev_metric = on_slice and metric != "accuracy"

  def row(label, p, drop):
    cells = [label] + ([_slice_cell(p, metric)] if on_slice else []) + [_pct(p["accuracy"])]
    cells += [_pct(p[metric]) if metric in p else "-"] if dev_metric else []
    return cells + [drop, f"{p['relative_flops']:.3f}", _fractions(p["tokens_kept_per_layer"])]

  rows = [row(_baseline_label(base) + _other_baseline(name, data, measured or {}), base,
              "-")]
  for series, p in _runs_by_flops(data):
    rows.append(row(_run_label(series, p) + _levels(p), p,
                    _pct(base["accuracy"] - p["accuracy"])))
  for key in ("topk_training_free", "threshold_training_free"):
    if not on_slice:
      break  # older files copy a sweep file's rows; its own table shows them
    for p in data.get(key) or []:
      rows.append(row(f"{p['method']}, training-free {result_files.setting_label(p)}"
                      + _full_layers(p) + _levels(p), p,
                      _pct(base["accuracy"] - p["accuracy"])))
  header = (["model"] + ([f"slice {metric} / FLOPs"] if on_slice else []) + ["dev accuracy"]
            + ([f"dev {metric}"] if dev_metric else [])
            + ["drop", "relative FLOPs", "tokens kept per layer (fraction of real)"])
  return (_table(header, rows) + _budget_table(data) + _stage_curve_table(data, metric)
          + _chosen_note(data) + _carried_note(data))


def _carried_note(data: dict) -> str:
  """Which rows were carried from an earlier curve file (`curves.carried_points`)."""
  carried = [_run_label(series, p) for series, p in _runs_by_flops(data)
             if p.get("carried_from")]
  if not carried:
    return ""
  return ("Carried from an earlier version of this file (their runs are no longer on "
          "disk; the baseline's slice and dev results are those they were measured "
          f"against): {', '.join(carried)}.\n")


def _stage_curve_table(data: dict, metric: str) -> str:
  """Each learned run's held-out slice evaluations, stage by stage: whether its
  metric had stopped rising when the run ended."""
  rows = [[_run_label(series, p), ", ".join(
      f"{stage} {step}: {_pct(value)} / {flops:.3f}"
      for stage, step, value, flops in p["slice_curve"])]
          for series, p in _runs_by_flops(data) if p.get("slice_curve")]
  if not rows:
    return ""
  return "\n" + _table(["run", f"held-out slice per evaluation (stage step: {metric} / "
                               "relative FLOPs)"], rows)


def _full_layers(row: dict) -> str:
  full = row.get("topk_full_layers")
  return f", {full} full" if row.get("method") == "topk" and full else ""


def _slice_cell(row: dict, metric: str) -> str:
  """'89.10 / 0.612': a setting's metric and relative FLOPs on the held-out slice."""
  sel = row.get(selection.SPLIT)
  return "-" if not sel else f"{_pct(sel[metric])} / {sel['relative_flops']:.3f}"


def sweep_table(data: dict, name: str = "", measured: dict = None) -> str:
  """Training-free pruning of one run over a grid of settings."""
  run, epochs = result_files.baseline_of(data)
  run += f" ({_epochs(epochs).strip()})" if epochs else ""
  run += _other_baseline(name, data, measured or {})
  if result_files.selected_on(data) != selection.SPLIT:
    rows = [[result_files.setting_label(row) or "unpruned", _pct(row["accuracy"]),
             f"{row['relative_flops']:.3f}", _fractions(row["tokens_kept_per_layer"])]
            for row in data["rows"]]
    return _table([f"{result_files.sweep_name(data)} on {run}, no training",
                   "dev accuracy", "relative FLOPs", "tokens kept per layer"],
                  rows) + _chosen_note(data)
  metric = data["metric"]
  # A task chosen on another metric (MRPC: F1) shows it on dev too.
  dev_metric = metric if metric != "accuracy" and all(metric in r for r in data["rows"]) \
      else None
  rows = [[(result_files.setting_label(row) + _full_layers(row)) or "unpruned",
           _level_list(row.get("flops_levels")) or "-",
           _slice_cell(row, metric), _pct(row["accuracy"])]
          + ([_pct(row[dev_metric])] if dev_metric else [])
          + [f"{row['relative_flops']:.3f}", _fractions(row["tokens_kept_per_layer"])]
          for row in data["rows"]]
  return _table([f"{data['method']} on {run}, no training, best per FLOPs level",
                 "FLOPs levels", f"slice {metric} / FLOPs", "dev accuracy"]
                + ([f"dev {dev_metric}"] if dev_metric else [])
                + ["relative FLOPs", "tokens kept per layer"], rows) + (
                     _chosen_note(data).rstrip("\n")
                     + f" {len(data['grid'])} settings tried.\n")


def _round_ratio(data: dict, name: str) -> str:
  """Unpruned time / this system's time per paired round: median [quartiles]."""
  order = (data.get("orders") or [None])[0]
  base = data["systems"].get("unpruned", {}).get(order, {}).get("rounds_s")
  mine = data["systems"][name].get(order, {}).get("rounds_s")
  if not base or not mine:
    return "-"
  r = np.asarray(base) / np.asarray(mine)
  return (f"{np.median(r):.2f}x [{np.percentile(r, 25):.2f}-"
          f"{np.percentile(r, 75):.2f}]")


def inference_table(data: dict) -> str:
  """Throughput and latency of every system of one benchmark."""
  rows = []
  paired = "orders" in data  # benchmarks with paired rounds
  for name, r in data["systems"].items():
    row = [result_files.system_name(name, data), f"{r['examples_per_s']:.1f}",
           f"{r['tokens_per_s']:.0f}"]
    if "quality" in data:  # benchmarks that record each system's accuracy
      row.insert(1, _pct(data["quality"][name]["accuracy"]))
    if paired:
      row.append(_round_ratio(data, name))
    rows.append(row + [f"{r['latency_p50_ms']:.2f} / {r['latency_p99_ms']:.2f}"])
  header = [result_files.describe_inference(data), "examples/s", "tokens/s"]
  if "quality" in data:
    header.insert(1, "accuracy")
  if paired:
    header.append(f"speed vs unpruned, per round, median [IQR] of {data['rounds']}")
  return (_table(header + ["p50 / p99 latency (ms)"], rows) + _ratio_table(data)
          + _targets_table(data))


# The speed targets of docs/benchmarks.md: ((ratio key, what it says), ...), at least /
# at most, the goal. The first key the file has is judged; "batch 1" ratios are
# order-free.
_TARGETS = [
    ((("speedup_over_flops_reduction_best_unpruned",
       "speedup vs the faster unpruned path / FLOPs reduction"),
      ("speedup_over_flops_reduction",
       "speedup vs unpruned (plain forward, keep-all not measured) / FLOPs reduction")),
     ">=", 0.95),
    ((("keep_all_time_over_unpruned", "keep-all time / unpruned time"),), "<=", 1.03),
    ((("pruned_over_unpruned_p50_per_round", "batch 1: pruned / unpruned p50"),), "<=", 1.0),
    ((("pruned_over_unpruned_p99_per_round", "batch 1: pruned / unpruned p99"),), "<=", 1.0),
    ((("pruned_over_onnxruntime_p50_per_round", "batch 1: pruned / ONNX Runtime p50"),),
     "<=", 1.0),
    ((("unpruned_speedup_vs_hf_pytorch", "unpruned speed / HF PyTorch eager"),), ">=", 1.2),
    ((("unpruned_speedup_vs_onnxruntime", "unpruned speed / ONNX Runtime"),), ">=", 1.0),
    ((("pruned_speedup_vs_onnxruntime", "pruned speed / ONNX Runtime"),), ">=", 1.5),
    ((("pruned_speedup_vs_onnxruntime_int8", "pruned speed / ONNX Runtime int8"),),
     ">=", 1.5),
]


def _targets_table(data: dict) -> str:
  """Each speed target the file can judge: its measured median (three decimals) and
  whether that median, unrounded, reaches it; one column per order."""
  ratios = data.get("ratios") or {}
  orders = [o for o in data.get("orders", []) if o in ratios]
  if not orders:
    return ""
  rows = []
  for choices, op, goal in _TARGETS:
    batch1 = choices[0][1].startswith("batch 1")
    found = ratios.get("batch1", {}) if batch1 else ratios[orders[0]]
    key, what = next(((k, w) for k, w in choices if isinstance(found.get(k), dict)),
                     (None, None))
    if key is None:
      continue
    cells = []
    for i, order in enumerate(orders):
      d = (ratios.get("batch1", {}) if batch1 else ratios[order]).get(key)
      if not isinstance(d, dict) or (batch1 and i > 0):
        cells.append("-")
        continue
      met = d["median"] >= goal if op == ">=" else d["median"] <= goal
      cells.append(f"{d['median']:.3f}x, {'met' if met else 'missed'}")
    rows.append([f"{what} {op} {goal:g}"] + cells)
  return "\n" + _table(["speed target, measured median"]
                       + [f"{o} batches" for o in orders], rows)


_RATIO_NAMES = {
    "speedup_pruned_vs_unpruned": "pruned speedup vs unpruned (plain forward)",
    "flops_reduction": "FLOPs reduction (unpruned / pruned)",
    "speedup_over_flops_reduction": "speedup / FLOPs reduction",
    "keep_all_time_over_unpruned": "keep-all time / unpruned time",
    "speedup_pruned_vs_best_unpruned":
        "pruned speedup vs the faster unpruned path (plain or keep-all) of each round",
    "speedup_over_flops_reduction_best_unpruned":
        "speedup vs the faster unpruned path / FLOPs reduction",
}


def _ratio_name(key: str) -> str:
  if key in _RATIO_NAMES:
    return _RATIO_NAMES[key]
  for peer in ("hf_pytorch", "onnxruntime"):
    for who in ("pruned", "unpruned"):
      if key == f"{who}_speedup_vs_{peer}":
        return f"{who} speed / {result_files.SYSTEM_NAMES[peer].split(',')[0]}"
  return key.replace("_", " ")


def _iqr(d, digits: int = 2) -> str:
  """'1.43x [1.33-1.50]': median [quartiles] of per-round ratios; a number as is."""
  if not isinstance(d, dict):
    return f"{d:.{digits}f}x"
  return (f"{d['median']:.{digits}f}x [{d['q25']:.{digits}f}-"
          f"{d['q75']:.{digits}f}]")


def _ratio_table(data: dict) -> str:
  """Per-round ratios of a paired benchmark: median [IQR], one column per order."""
  ratios = data.get("ratios") or {}
  orders = [o for o in data.get("orders", []) if o in ratios]
  if not orders:
    return ""
  keys = [k for k in ratios[orders[0]]]
  # Ratios to the FLOPs reduction are compared with targets: three decimals.
  rows = [[_ratio_name(k)] + [_iqr(ratios[o][k], 3 if "over_flops" in k else 2)
                              if k in ratios[o] else "-" for o in orders] for k in keys]
  batch1 = ratios.get("batch1", {})
  rows += [[f"batch 1: {k.replace('_per_round', '').replace('_over_', ' / ').replace('_', ' ')}"
            ", per round", _iqr(v)] + ["-"] * (len(orders) - 1)
           for k, v in batch1.items() if isinstance(v, dict) and "median" in v]
  return "\n" + _table([f"per-round ratio, median [IQR] of {data['rounds']}"]
                       + [f"{o} batches" if o != "batch1" else o for o in orders], rows)


def ratios_table(data: dict) -> str:
  """One trained SDTP run evaluated at other keep ratios, without training."""
  f1 = any("f1" in p for p in data["points"])
  chosen = result_files.selected_on(data) == selection.SPLIT
  rows = []
  for p in data["points"]:
    row = [result_files.setting_label(p) or "-"]
    row += [_level_list(p["flops_levels"]),
            _slice_cell(p, data["metric"])] if chosen else []
    row += [_pct(p["accuracy"])]
    row += [_pct(p["f1"])] if f1 else []
    row += [f"{p['relative_flops']:.3f}",
            f"{p['relative_flops_with_predictors']:.3f}"
            if "relative_flops_with_predictors" in p else "-",
            f"{100 * p['tokens_pruned']:.1f}%" if "tokens_pruned" in p else "-"]
    rows.append(row)
  run = os.path.basename(os.path.normpath(data["workdir"]))
  header = [f"{run}, other keep ratios, no training"]
  header += ["FLOPs levels", f"slice {data['metric']} / FLOPs"] if chosen else []
  header += ["dev accuracy"] + (["F1"] if f1 else [])
  note = _chosen_note(data)
  if chosen:
    note = note.rstrip("\n") + f" {len(data['grid'])} ratios tried.\n"
  return _table(header + ["relative FLOPs", "with the predictors",
                          "tokens pruned (1 - mean kept fraction)"], rows) + note


def rules_table(data: dict) -> str:
  """One ToP run's checkpoints under each inference rule."""
  run = os.path.basename(os.path.normpath(data["workdir"]))
  if result_files.selected_on(data) != selection.SPLIT:
    rows = [[r["rule"], f"{r['checkpoint']} (step {r.get('step', '-')})",
             _pct(r["accuracy"]), f"{r['relative_flops']:.3f}",
             _fractions(r["tokens_kept_per_layer"])] for r in data["rows"]]
    return _table([f"{run}: inference rule", "checkpoint", "dev accuracy",
                   "relative FLOPs", "tokens kept per layer"], rows) + _chosen_note(data)
  metric = data["metric"]
  rows = [[r["rule"], f"{r['checkpoint']} (step {r.get('step', '-')})",
           _slice_cell(r, metric), "chosen" if r.get("chosen") else "",
           _pct(r["accuracy"]) if r.get("chosen") else "-",
           f"{r['relative_flops']:.3f}" if r.get("chosen") else "-",
           _fractions(r["tokens_kept_per_layer"]) if r.get("chosen") else "-"]
          for r in data["rows"]]
  budget = data.get("flops_budget")
  return _table([f"{run}: inference rule", "checkpoint", f"slice {metric} / FLOPs",
                 "chosen, FLOPs ≤ " + (f"{budget:g}" if budget is not None else "any"),
                 "dev accuracy", "relative FLOPs", "tokens kept per layer"],
                rows) + _chosen_note(data)


def _spread(d: dict, digits: int = 2, unit: str = "x") -> str:
  """'1.41x [1.29, 2.46]': median [min, max] of per-round values."""
  return (f"{d['median']:.{digits}f}{unit} [{d['min']:.{digits}f}, "
          f"{d['max']:.{digits}f}]")


def decoder_speed_table(data: dict) -> str:
  """Decoder tokens/s of tpjax, PyTorch and llama.cpp, prefill and decode."""
  summary = data["summary"]
  items = [(f"prefill {n}", v) for n, v in summary["prefill"].items()]
  items.append((f"decode ({data['decode_tokens']} tokens after "
                f"{data['decode_prompt_tokens']})", summary["decode"]))
  rows = [[name, f"{v['tpjax']['median']:.1f}", f"{v['torch']['median']:.1f}",
           _spread(v["tpjax_over_torch"]), str(v["tpjax_over_torch"]["n"]),
           f"{v['llamacpp']['median']:.1f} ({v['llamacpp']['n']} rounds)"
           if "llamacpp" in v else "-"] for name, v in items]
  return _table(["", "tpjax (float32) tok/s", "PyTorch (float32) tok/s",
                 "tpjax / PyTorch per round, median [min, max]", "rounds",
                 "llama.cpp (GGUF as stored) tok/s"], rows)


def _ci(d: dict, digits: int = 3, scale: float = 1.0) -> str:
  """'0.123 [0.101, 0.150]': a mean and its bootstrap interval; '-' when missing."""
  if not d:
    return "-"
  return (f"{scale * d['mean']:.{digits}f} [{scale * d['lo']:.{digits}f}, "
          f"{scale * d['hi']:.{digits}f}]")


def sdtp_decoder_eval_table(data: dict) -> str:
  """Every system's metrics with 95% bootstrap intervals: documents (KL, top-1
  agreement, NLL of the continuation), QA with the answer early (gold-answer NLL,
  exact match), passkey retrieval per depth."""
  summary, systems = data.get("summary", {}), data["systems"]
  keep = data.get("keep", {})
  out = []
  if summary.get("documents"):
    rows = []
    for length, cell in summary["documents"].items():
      kept = keep.get(length, {}).get("token_layers_kept")
      for name in systems:
        m = cell["systems"].get(name, {})
        rows.append([length, f"{cell['items']} ({cell['articles']})",
                     "-" if kept is None else f"{kept:.3f}", name, _ci(m.get("kl")),
                     _ci(m.get("top1")), _ci(m.get("nll"))])
    out.append(_table(["prompt tokens", "docs (articles)", "token-layers kept", "system",
                       "KL(full ‖ pruned)", "top-1 agreement", "continuation NLL"],
                      rows))
  if summary.get("qa"):
    rows = []
    for length, cell in summary["qa"].items():
      for name in systems:
        m = cell["systems"].get(name, {})
        given = m.get("em_given_full")
        rows.append([length, f"{cell['items']} ({cell['articles']})",
                     f"{cell['mean_answer_depth']:.2f}", name, _ci(m.get("nll")),
                     _ci(m.get("em"), 0, 100),
                     "-" if not given else f"{_ci(given, 0, 100)} of {given['n']}"])
    out.append(_table(["prompt tokens", "questions (articles)", "mean answer depth",
                       "system", "gold-answer NLL", "exact match (%)",
                       "exact match where full is (%)"], rows))
  if summary.get("passkey"):
    depths = sorted({d for cell in summary["passkey"].values() for d in cell}, key=float)
    rows = []
    for length, cells in summary["passkey"].items():
      items = max(c["items"] for c in cells.values())
      for name in systems:
        rows.append([length, str(items), name] + [
            _ci(cells[d]["systems"].get(name, {}).get("retrieved"), 0, 100)
            if d in cells else "-" for d in depths])
    out.append(_table(["prompt tokens", "haystacks", "system"]
                      + [f"passkey retrieved at {100 * float(d):.0f}% depth (%)"
                         for d in depths], rows))
  return "\n".join(out)


def sdtp_decoder_training_table(data: dict) -> str:
  """Per stage: the modules' top-k agreement with the true saliency, against chance."""
  agree = data["topk_agreement"]
  hold = agree["training_holdout"]
  ratios = agree["evaluation_articles"]["ratios"]
  header = ["stage layer",
            f"training hold-out (r={hold['ratio']}): kept / chance / before / after"]
  header += [f"evaluation articles (r={r}): kept / chance / agreement" for r in ratios]
  rows = []
  for s, layer in enumerate(data["schedule"]["layers"]):
    row = [str(layer), f"{hold['keep'][s]:.3f} / {hold['chance'][s]:.3f} / "
                       f"{hold['before'][s]:.3f} / {hold['after'][s]:.3f}"]
    row += [f"{v['keep'][s]:.3f} / {v['chance'][s]:.3f} / {v['agreement'][s]:.3f}"
            for v in ratios.values()]
    rows.append(row)
  return _table(header, rows)


def sdtp_decoder_kept_table(data: dict) -> str:
  """Where each pruner keeps tokens: per fifth of a document at the last stage, and the
  passkey needle's share entering each stage."""
  profile, layers = data["kept_profile"], data["schedule"]["layers"]
  out = []
  if "documents" in profile:
    rows = [[length, str(cell["items"]), name] + [f"{v:.2f}" for v in shares["fifths"]]
            for length, cell in profile["documents"].items()
            for name, shares in cell["systems"].items()]
    out.append(_table(["prompt tokens", "docs", "system"]
                       + [f"fifth {i + 1} kept at layer {layers[-1]}" for i in range(5)],
                       rows))
  if "passkey" in profile:
    rows = []
    for key, cell in profile["passkey"].items():
      length, depth = key.split("/")
      rows += [[length, f"{100 * float(depth):.0f}%", str(cell["items"]), name]
               + [f"{v:.2f}" for v in shares["needle"]]
               for name, shares in cell["systems"].items()]
    out.append(_table(["prompt tokens", "key depth", "haystacks", "system"]
                      + [f"needle at layer {l}" for l in layers], rows))
  return "\n\n".join(out)


def sdtp_decoder_speed_table(data: dict) -> str:
  """Time to first token of the full and the SDTP-pruned prefill, per length."""
  rows = []
  for length, v in data["summary"].items():
    full, sdtp = v["full"], v["sdtp"]
    rows.append([
        length, f"{v['flops_reduction']:.2f}x",
        f"{full['ttft_seconds']['median']:.2f}", f"{sdtp['ttft_seconds']['median']:.2f}",
        _spread(v["speedup_full_over_sdtp"]), f"{v['speedup_over_flops_reduction']:.2f}",
        f"{full['kv_valid_mib']:.1f} / {sdtp['kv_valid_mib']:.1f}",
        f"{full['peak_rss_increase_mib']['median']:.0f} / "
        f"{sdtp['peak_rss_increase_mib']['median']:.0f}",
        str(v["speedup_full_over_sdtp"]["n"])])
  return _table(["prompt tokens", "prefill MACs reduction", "full TTFT (s)",
                 "SDTP TTFT (s)", "speedup per round, median [min, max]",
                 "speedup / MACs reduction", "KV cache full / SDTP (MiB)",
                 "peak RSS increase full / SDTP (MiB)", "rounds"], rows)


_DESIGN_NAMES = {"plain": "plain forward", "keep_all": "keep-all (packed)",
                 "decide_after_dense": "pruned, decision after the output dense",
                 "chunk=256": "pruned, decision first (shipped)"}


def engine_designs_table(data: dict) -> str:
  """Best-of-N milliseconds per batch of each engine design, per input."""
  systems = list(next(iter(data["best_ms"].values())))
  both = "decide_after_dense" in systems and "chunk=256" in systems
  rows = []
  for name, ms in data["best_ms"].items():
    row = [name] + [f"{ms[s]:g}" if s in ms else "-" for s in systems]
    if both:
      row.append(f"{ms['chunk=256'] / ms['decide_after_dense']:.3f}")
    rows.append(row)
  header = [f"input (ms per batch, best of {data.get('repeats', 'N')})"]
  header += [_DESIGN_NAMES.get(s, s) for s in systems]
  return _table(header + (["decision first / after, time"] if both else []), rows)


def train_speed_table(data: dict) -> str:
  """Step time of the second system (a newer checkout, or the second compute dtype)
  over the first, per stage and round."""
  first, second = data.get("dtypes") or ("old", "new")
  rows = []
  for stage, v in data["stages"].items():
    a, b = v["steps_per_s_median"]
    rows.append([stage, ", ".join(f"{r['ratio_new_over_old']:.2f}" for r in v["rounds"]),
                 f"{v['ratio_median']:.2f}", f"{1 / a:.2f} / {1 / b:.2f}"])
  return _table([f"stage ({data['steps']} steps a round, first {data['skip']} skipped)",
                 f"{second} / {first} step time, per round", "median",
                 f"median step time {first} / {second} (s)"], rows)


def precision_quality_table(data: dict) -> str:
  """Each system's accuracy at its precision, and the bf16 engine's keep decisions."""
  quality, n = data["quality"], data["examples"]
  base = quality["unpruned"]["accuracy"]
  rows = [[result_files.system_name(name, data), precision, _pct(quality[name]["accuracy"]),
           f"{round((quality[name]['accuracy'] - base) * n):+d} of {n}"]
          for name, precision in data["precision"].items()]
  agree = quality.get("keep_decisions_bf16_equal_float32")
  if agree is not None:
    rows.append(["pruned_bf16 keep decisions equal to pruned's", "-",
                 f"{100 * agree:.2f}% of token-layers", "-"])
  return _table([f"{data['task']} {data['split']} ({n}), relative FLOPs "
                 f"{data['relative_flops']:.3f}", "precision", "accuracy",
                 "examples vs unpruned float32"], rows)


def fresh_clone_table(data: dict) -> str:
  """`make run` or `make test` timed on a fresh clone, its commit and, for `make test`,
  its last line; for `make run`, each stage's dev accuracy and relative FLOPs, the
  drop from the fine-tuned stage, and the checkpoint handed over, as judged on the
  held-out slice."""
  load = data["load_average"]
  head = _table(["command", "date", "machine", "exit code", "wall time", "install",
                 "load average, mean / max"],
                [[f"`{data['command']}`", data["date"],
                  f"{data['machine']['cpu']}, {data['machine']['cores']} cores",
                  str(data["exit_code"]), f"{data['wall_s'] / 60:.1f} min",
                  f"{data['install_s'] / 60:.1f} min",
                  f"{load['mean']:.2f} / {load['max']:.2f}"]])
  if data.get("commit"):
    head += f"\nAt commit {data['commit'][:7]}"
    summary_line = data.get("final_line", "")
    head += (f"; its last line: `{summary_line}`.\n" if not data.get("summary")
             and summary_line else ".\n")
  summary = data.get("summary")
  if not summary:
    return head
  rows, first = [], None
  for name, stage in summary["stages"].items():
    dev = next(iter(stage["dev"].values()))
    first = first or dev
    chosen = stage.get("selection")
    handed = "-" if not chosen else (
        f"{stage.get('handover', '-')}: {_pct(chosen['accuracy'])} / "
        f"{chosen['relative_flops']:.3f}")
    budget = stage.get("flops_budget")
    rows.append([name, f"{stage['epochs']:g}", _pct(dev["accuracy"]),
                 f"{100 * (dev['accuracy'] - first['accuracy']):+.2f}",
                 f"{dev['relative_flops']:.3f}", handed,
                 "-" if budget is None else f"{budget:g}",
                 f"{stage['wall_time_s'] / 60:.1f} min"])
  return head + "\n" + _table(
      ["stage", "epochs", "dev accuracy", "points vs fine-tuned", "relative FLOPs",
       "handed over, on the held-out slice: accuracy / FLOPs", "slice FLOPs bound",
       "wall time"], rows)


def precision_dots_table(data: dict) -> str:
  """Each dot form and the dense forward per XLA flag setting, against float32."""
  cpu = data["cpu"]
  rows = []
  for setting, v in data["settings"].items():
    for form, f in v["forms"].items():
      rows.append([setting, form, f"{f['median_ms']:.2f}",
                   f"{f['speed_vs_float32_median']:.2f}x "
                   f"[{f['speed_vs_float32_range'][0]:.2f}-"
                   f"{f['speed_vs_float32_range'][1]:.2f}]"])
  flags = ", ".join(cpu["matrix_flags"]) or "none"
  return _table([f"XLA flags ({cpu['model']}, {data['cores']} cores; bf16/int8 matrix "
                 f"flags: {flags})", "form", "median ms",
                 f"speed vs float32, median [min-max] of {data['rounds']} rounds"], rows)


def _task_key(display: str) -> str:
  """'sst2' for 'SST-2' (a headline row names its task as GLUE's folder does)."""
  return next((k for k, info in glue.TASKS.items() if info.tsv_dir == display),
              display.lower())


def _find_run(measured: dict, run: str, setting: dict, task: str = "", curve: str = ""):
  """(run point, its curve file) from curve file `curve` if named, else the first
  curve file of `task` holding run `run` and measured against the task's baseline
  (any curve file when the task names none)."""
  entry = _baselines(measured).get(task)
  for name, data in measured.items():
    if not result_files.is_curve(data) or (curve and name != curve) or (
        entry and not (result_files.task_of(name, data) == task
                       and result_files.uses_baseline(data, entry))):
      continue
    for _, runs in result_files.curve_runs(data):
      for p in runs:
        if (os.path.basename(os.path.normpath(p["workdir"])) == run
            and all(p.get(k) == v for k, v in setting.items())):
          return p, data
  return None, None


def headline_table(data: dict, measured: dict) -> str:
  """Method x task: each cell looked up in the curve and benchmark files."""
  rows = []
  for entry in data["headline"]:
    point, curve = _find_run(measured, entry["run"], entry.get("setting", {}),
                             _task_key(entry["task"]), entry.get("curve", ""))
    base = curve["baseline"] if curve else None
    bench = next((b for b in measured.values() if result_files.is_inference(b)
                  and os.path.basename(os.path.normpath(b["workdir"])) == entry["run"]),
                 None)
    flops = point["relative_flops"] if point else (
        bench["pruning"]["relative_flops"] if bench else None)
    speed = "not measured"
    if bench and "ratios" in bench:
      order = bench["orders"][0]
      speed = _iqr(bench["ratios"][order]["speedup_pruned_vs_unpruned"])
      speed += f", engine {bench['engine']}" if "engine" in bench else ""
    rows.append([
        entry["task"], f"{entry['method']} {result_files.setting_label(point or {})}".strip(),
        _pct(base["accuracy"]) if base else "not measured on this layout",
        _pct(base["accuracy"] - point["accuracy"]) if point else
        "not measured on this layout",
        f"{flops:.3f}" if flops is not None else "-", speed,
        result_files.selection_label(curve) if curve else "-"])
  return _table(["task (dev)", "method", "baseline accuracy", "accuracy drop (points)",
                 "relative FLOPs", "measured speedup vs unpruned, median [IQR]",
                 "checkpoints and settings chosen on"], rows)


def _lookup_baseline(task: str, entry: dict, measured: dict):
  """The baseline's dev result: recorded in its entry, else the baseline point of a
  curve file of `task` measured against it."""
  if "accuracy" in entry:
    return entry
  for name, data in measured.items():
    if (result_files.is_curve(data) and result_files.task_of(name, data) == task
        and result_files.uses_baseline(data, entry)):
      return data["baseline"]
  return None


def baselines_table(data: dict, measured: dict) -> str:
  """The one baseline of each task: its run, length, dev result, how it was chosen."""
  rows = []
  for task, entry in data["baselines"].items():
    dev = _lookup_baseline(task, entry, measured)
    metric = glue.TASKS[task].metric
    result = "not measured" if dev is None else _pct(dev["accuracy"]) + (
        f" / F1 {_pct(dev['f1'])}" if metric == "f1" and "f1" in dev else "")
    wall = entry.get("wall_time_s")
    load = entry.get("load_average")
    rows.append([glue.TASKS[task].tsv_dir, entry["run"], _epochs(entry.get("epochs")).strip()
                 or "-", _learning_rate(entry), result, result_files.selection_label(entry),
                 _slice_curve(entry, metric),
                 (f"{wall / 60:.0f} min" if wall else "-")
                 + (f" (load {load['mean']:.1f})" if load else ""),
                 f"`{entry['command']}`" if entry.get("command") else "-"])
  return _table(["task", "baseline run", "fine-tune", "lr", "dev accuracy",
                 "checkpoint chosen on", "held-out slice per evaluation (step: metric)",
                 "wall time", "command"], rows)


def _learning_rate(entry: dict) -> str:
  return f"{entry['learning_rate']:g}" if entry.get("learning_rate") else "-"


def _slice_curve(entry: dict, metric: str) -> str:
  """'106: 82.1, 212: 84.9, ...' (percent) of a baseline's held-out slice evaluations,
  the chosen one in bold; '-' when the entry has none."""
  curve = entry.get("slice_curve")
  if not curve:
    return "-"
  values = [value for _, value in curve]
  chosen = values.index(max(values))  # a later tie is no new best
  cells = [f"**{step}: {_pct(value)}**" if i == chosen else f"{step}: {_pct(value)}"
           for i, (step, value) in enumerate(curve)]
  return (f"{metric} " if metric != "accuracy" else "") + ", ".join(cells)


_TABLES = {"precision_dots": precision_dots_table, "fresh_clone": fresh_clone_table,
           "precision_quality": precision_quality_table, "curve": curve_table, "sweep": sweep_table, "inference": inference_table,
           "ratios": ratios_table, "rules": rules_table,
           "decoder_speed": decoder_speed_table,
           "sdtp_decoder_eval": sdtp_decoder_eval_table,
           "sdtp_decoder_training": sdtp_decoder_training_table,
           "sdtp_decoder_kept": sdtp_decoder_kept_table,
           "sdtp_decoder_speed": sdtp_decoder_speed_table,
           "engine_designs": engine_designs_table, "train_speed": train_speed_table}


def table_for(name: str, data: dict, measured: dict = None) -> str:
  """The table for result file `name` with contents `data`.

  Args:
    name: File name, for the error message.
    data: Its parsed JSON.
    measured: Every result file by name; the headline table looks cells up there.

  Raises:
    ValueError: If the file is of no kind that has a table.
  """
  kind = result_files.kind_of(data)
  if kind == "headline":
    return headline_table(data, measured or {})
  if kind == "baselines":
    return baselines_table(data, measured or {})
  if kind in ("curve", "sweep"):
    return _TABLES[kind](data, name, measured or {})
  if kind not in _TABLES:
    raise ValueError(f"{name}: no table for this kind of result file.")
  return _TABLES[kind](data)


def render(text: str, results_dir: str) -> str:
  """`text` with every marked table regenerated from `results_dir`.

  Args:
    text: Contents of README or a docs page.
    results_dir: Folder of result JSON files.

  Returns:
    The new contents.

  Raises:
    FileNotFoundError: If a marker names a file that is not in `results_dir`.
  """
  measured = result_files.read_all(results_dir)

  def fill(match):
    name = match.group("name")
    if name not in measured:
      raise FileNotFoundError(f"table {name!r} has no file in {results_dir}.")
    return match.group(1) + table_for(name, measured[name], measured) + match.group(4)
  return BLOCK.sub(fill, text)


def stale_tables(text: str, results_dir: str) -> list:
  """Names of the marked tables in `text` that differ from the measurements."""
  fresh = render(text, results_dir)
  old = {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
  return [m.group("name") for m in BLOCK.finditer(fresh)
          if old.get(m.group("name")) != m.group("body")]


def draw_plots(results_dir: str, task: str) -> list:
  """Redraws the pictures README shows, next to the JSON they come from.

  Args:
    results_dir: Folder of result JSON files; the PNGs are written there.
    task: Task whose accuracy-versus-FLOPs points are plotted.

  Returns:
    Paths written: `pareto_<task>.png` and `throughput.png`.
  """
  pareto = os.path.join(results_dir, f"pareto_{task}.png")
  base = result_files.task_baseline(task, results_dir) or {}
  against = (f", against {base['run']}{_epochs(base.get('epochs'))}" if base else "")
  plots.pareto_plot(result_files.accuracy_points(results_dir, task),
                    title=f"{task}: dev accuracy versus relative FLOPs{against}",
                    path=pareto)
  throughput = os.path.join(results_dir, "throughput.png")
  plots.throughput_plot(list(result_files.inference_results(results_dir).values()),
                      path=throughput)
  return [pareto, throughput]
