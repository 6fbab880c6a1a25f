"""`python -m tpjax.report [--check]`: the results tables of README and docs/, from JSON.

Without flags the marked tables (tpjax/results/tables.py) of README.md and every
docs/*.md page are rewritten in place and the pictures README shows are redrawn
(`pareto_<task>.png`, `throughput.png`, beside the JSON); `--check` only compares the
tables, and exits 1 when any page and the measurements disagree (the test suite runs
the same check).
"""

import glob
import os
import sys

from absl import flags

from tpjax import cli
from tpjax.results import files as result_files
from tpjax.results import tables

_PAGES = flags.DEFINE_list(
    "pages", None, "Files holding tables; default README.md and docs/*.md.")
_RESULTS = flags.DEFINE_string("results", result_files.DEFAULT_DIR,
                               "Folder of result JSON files.")
_CHECK = flags.DEFINE_bool("check", False, "Only check; exit 1 if a table is stale.")
_TASK = flags.DEFINE_string("task", "sst2", "Task of the accuracy-versus-FLOPs plot.")


def pages() -> list:
  """README.md and every docs/*.md page, relative to the working directory."""
  return ["README.md"] + sorted(glob.glob(os.path.join("docs", "*.md")))


def main(argv):
  del argv
  stale_pages, counts = {}, {}
  texts = {}
  for page in _PAGES.value or pages():
    with open(page, encoding="utf-8") as f:
      texts[page] = f.read()
    counts[page] = len(tables.BLOCK.findall(texts[page]))
    stale = tables.stale_tables(texts[page], _RESULTS.value)
    if stale:
      stale_pages[page] = stale
  total = sum(counts.values())
  if _CHECK.value:
    if stale_pages:
      for page, stale in stale_pages.items():
        print(f"{page}: stale tables {', '.join(stale)}; run python -m "
              "tpjax.report to regenerate them.", file=sys.stderr)
      sys.exit(1)
    print(f"{len(texts)} pages: {total} tables match {_RESULTS.value}.")
    return
  for page in stale_pages:
    tmp = page + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(tables.render(texts[page], _RESULTS.value))
    os.replace(tmp, page)
  rewritten = [f"{p} ({', '.join(s)})" for p, s in stale_pages.items()]
  print(f"{len(texts)} pages, {total} tables, rewritten: {'; '.join(rewritten) or 'none'}; "
        f"pictures: {', '.join(tables.draw_plots(_RESULTS.value, _TASK.value))}.")


if __name__ == "__main__":
  cli.run(main, "tpjax.report")
