"""`python -m tpjax.report [--check]`: README's results tables, from the JSON files.

Without flags the marked tables (tpjax/results/tables.py) are rewritten in place and the
pictures README shows are redrawn (`pareto_<task>.png`, `throughput.png`, beside the
JSON); `--check` only compares the tables, and exits 1 when README and the measurements
disagree (the test suite runs the same check).
"""

import os
import sys

from absl import flags

from tpjax import cli
from tpjax.results import files as result_files
from tpjax.results import tables

_README = flags.DEFINE_string("readme", "README.md", "The file holding the tables.")
_RESULTS = flags.DEFINE_string("results", result_files.DEFAULT_DIR,
                               "Folder of result JSON files.")
_CHECK = flags.DEFINE_bool("check", False, "Only check; exit 1 if a table is stale.")
_TASK = flags.DEFINE_string("task", "sst2", "Task of the accuracy-versus-FLOPs plot.")


def main(argv):
  del argv
  with open(_README.value, encoding="utf-8") as f:
    text = f.read()
  stale = tables.stale_tables(text, _RESULTS.value)
  count = len(tables.BLOCK.findall(text))
  if _CHECK.value:
    if stale:
      print(f"{_README.value}: stale tables {', '.join(stale)}; run python -m "
            "tpjax.report to regenerate them.", file=sys.stderr)
      sys.exit(1)
    print(f"{_README.value}: {count} tables match {_RESULTS.value}.")
    return
  if stale:
    tmp = _README.value + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(tables.render(text, _RESULTS.value))
    os.replace(tmp, _README.value)
  print(f"{_README.value}: {count} tables, {len(stale)} rewritten "
        f"({', '.join(stale) or 'none'}); pictures: "
        f"{', '.join(tables.draw_plots(_RESULTS.value, _TASK.value))}.")


if __name__ == "__main__":
  cli.run(main, "tpjax.report")
