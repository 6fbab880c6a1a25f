"""`python -m tpjax.report [--check]`: README's results tables, from the JSON files.

Each generated table sits in README between two marker comments naming its file in
benchmarks/results/:

    <!-- report:inference_sst2_ltp_lam0.05.json -->
    ...table...
    <!-- /report -->

The file's kind picks the table (see tpjax/results.py): a curve file gives the trained
runs' table (accuracy, drop, FLOPs, tokens kept per layer), a sweep file the
training-free baseline table, a benchmark file the throughput and latency table.
Without flags the tables are rewritten in place and the pictures README shows are
redrawn (`pareto_<task>.png`, `throughput.png`, beside the JSON); `--check` only
compares the tables, and exits 1 when README and the measurements disagree (the test
suite runs the same check).
"""

import os
import re
import sys

import numpy as np

from absl import flags

from tpjax import cli
from tpjax import results
from tpjax import viz

_README = flags.DEFINE_string("readme", "README.md", "The file holding the tables.")
_RESULTS = flags.DEFINE_string("results", results.DEFAULT_DIR,
                               "Folder of result JSON files.")
_CHECK = flags.DEFINE_bool("check", False, "Only check; exit 1 if a table is stale.")
_TASK = flags.DEFINE_string("task", "sst2", "Task of the accuracy-versus-FLOPs plot.")

_BLOCK = re.compile(
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
  for series, runs in results.curve_runs(data):
    for p in sorted(runs, key=lambda p: p["relative_flops"], reverse=True):
      rows.append([f"{series} {results.setting_label(p)}".strip(), _pct(p["accuracy"]),
                   _pct(base["accuracy"] - p["accuracy"]), f"{p['relative_flops']:.3f}",
                   _fractions(p["tokens_kept_per_layer"])])
  return _table(["model", "dev accuracy", "drop", "relative FLOPs",
                 "tokens kept per layer (fraction of real)"], rows)


def sweep_table(data: dict) -> str:
  """Training-free pruning of one run over a grid of settings."""
  rows = [[results.setting_label(row) or "unpruned", _pct(row["accuracy"]),
           f"{row['relative_flops']:.3f}", _fractions(row["tokens_kept_per_layer"])]
          for row in data["rows"]]
  return _table([f"{results.sweep_name(data)} on {data['workdir']}, no training",
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
    row = [results.system_name(name, data), f"{r['examples_per_s']:.1f}",
           f"{r['tokens_per_s']:.0f}"]
    if paired:
      row.append(_round_ratio(data, name))
    rows.append(row + [f"{r['latency_p50_ms']:.2f} / {r['latency_p99_ms']:.2f}"])
  header = [results.describe_inference(data), "examples/s", "tokens/s"]
  if paired:
    header.append(f"speed vs unpruned, per round, median [IQR] of {data['rounds']}")
  return _table(header + ["p50 / p99 latency (ms)"], rows)


def table_for(name: str, data: dict) -> str:
  """The table for result file `name` with contents `data`."""
  if results.is_curve(data):
    return curve_table(data)
  if results.is_sweep(data):
    return sweep_table(data)
  if results.is_inference(data):
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
  measured = results.read_all(results_dir)

  def fill(match):
    name = match.group("name")
    if name not in measured:
      raise FileNotFoundError(f"README table {name!r} has no file in {results_dir}.")
    return match.group(1) + table_for(name, measured[name]) + match.group(4)
  return _BLOCK.sub(fill, text)


def stale_tables(text: str, results_dir: str) -> list:
  """Names of the marked tables in `text` that differ from the measurements."""
  fresh = render(text, results_dir)
  old = {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}
  return [m.group("name") for m in _BLOCK.finditer(fresh)
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
  viz.pareto_plot(results.accuracy_points(results_dir, task),
                  title=f"{task}: dev accuracy versus relative FLOPs", path=pareto)
  throughput = os.path.join(results_dir, "throughput.png")
  viz.throughput_plot(list(results.inference_results(results_dir).values()),
                      path=throughput)
  return [pareto, throughput]


def main(argv):
  del argv
  with open(_README.value, encoding="utf-8") as f:
    text = f.read()
  stale = stale_tables(text, _RESULTS.value)
  tables = len(_BLOCK.findall(text))
  if _CHECK.value:
    if stale:
      print(f"{_README.value}: stale tables {', '.join(stale)}; run python -m "
            "tpjax.report to regenerate them.", file=sys.stderr)
      sys.exit(1)
    print(f"{_README.value}: {tables} tables match {_RESULTS.value}.")
    return
  if stale:
    tmp = _README.value + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(render(text, _RESULTS.value))
    os.replace(tmp, _README.value)
  print(f"{_README.value}: {tables} tables, {len(stale)} rewritten "
        f"({', '.join(stale) or 'none'}); pictures: "
        f"{', '.join(draw_plots(_RESULTS.value, _TASK.value))}.")


if __name__ == "__main__":
  cli.run(main, "tpjax.report")
