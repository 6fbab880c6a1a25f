"""Command line: `python -m tpjax.main --config=configs/sst2.py [--workdir=DIR]`."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tpjax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory; default runs/<config file name>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_path = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  os.makedirs(workdir, exist_ok=True)
  logging.get_absl_handler().use_absl_log_file("train", workdir)
  logging.info("Workdir %s, config:\n%s", workdir, _CONFIG.value)
  try:
    summary = train.train_and_evaluate(_CONFIG.value, workdir)
  except train.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
  print(f"Done: {summary['task']} ({summary['method']}) dev {summary['dev']} "
        f"in {summary['wall_time_s']:.0f}s; summary in {workdir}/summary.json")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
