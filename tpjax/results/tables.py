"""README's results tables and pictures, generated from the JSON files.

Each generated table sits in README (or a page under docs/) between two marker
comments naming its file in benchmarks/results/:

    <!-- report:inference_sst2_ltp_lam0.05.json -->
    ...table...
    <!-- /report -->

The file's kind picks the table (see tpjax/results/files.py): a curve file gives the
trained runs' table (accuracy, drop, FLOPs, tokens kept per layer), a sweep file the
training-free baseline table, a benchmark file the throughput and latency table.
"""

import os
import re

import numpy as np

from tpjax.results import files as result_files
from tpjax.results import plots

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


def curve_table(data: dict) -> str:
  """Every trained run of a curve file against the unpruned run they started from."""
  base = data["baseline"]
  rows = [["fine-tuned, unpruned", _pct(base["accuracy"]), "-", "1.000",
           _fractions(base["tokens_kept_per_layer"])]]
  for series, runs in result_files.curve_runs(data):
    for p in sorted(runs, key=lambda p: p["relative_flops"], reverse=True):
      rows.append([f"{series} {result_files.setting_label(p)}".strip(), _pct(p["accuracy"]),
                   _pct(base["accuracy"] - p["accuracy"]), f"{p['relative_flops']:.3f}",
                   _fractions(p["tokens_kept_per_layer"])])
  return _table(["model", "dev accuracy", "drop", "relative FLOPs",
                 "tokens kept per layer (fraction of real)"], rows)


def sweep_table(data: dict) -> str:
  """Training-free pruning of one run over a grid of settings."""
  rows = [[result_files.setting_label(row) or "unpruned", _pct(row["accuracy"]),
           f"{row['relative_flops']:.3f}", _fractions(row["tokens_kept_per_layer"])]
          for row in data["rows"]]
  return _table([f"{result_files.sweep_name(data)} on {data['workdir']}, no training",
                 "dev accuracy", "relative FLOPs", "tokens kept per layer"], rows)


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
  paired = "orders" in data  # benchmarks with paired rounds (issue 12)
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
  return _table(header + ["p50 / p99 latency (ms)"], rows)


def table_for(name: str, data: dict) -> str:
  """The table for result file `name` with contents `data`."""
  if result_files.is_curve(data):
    return curve_table(data)
  if result_files.is_sweep(data):
    return sweep_table(data)
  if result_files.is_inference(data):
    return inference_table(data)
  raise ValueError(f"{name}: not a curve, sweep or benchmark result.")


def render(text: str, results_dir: str) -> str:
  """`text` with every marked table regenerated from `results_dir`.

  Args:
    text: README contents.
    results_dir: Folder of result JSON files.

  Returns:
    The new README contents.

  Raises:
    FileNotFoundError: If a marker names a file that is not in `results_dir`.
  """
  measured = result_files.read_all(results_dir)

  def fill(match):
    name = match.group("name")
    if name not in measured:
      raise FileNotFoundError(f"README table {name!r} has no file in {results_dir}.")
    return match.group(1) + table_for(name, measured[name]) + match.group(4)
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
  plots.pareto_plot(result_files.accuracy_points(results_dir, task),
                  title=f"{task}: dev accuracy versus relative FLOPs", path=pareto)
  throughput = os.path.join(results_dir, "throughput.png")
  plots.throughput_plot(list(result_files.inference_results(results_dir).values()),
                      path=throughput)
  return [pareto, throughput]
