"""Command line: `python -m tpjax.main --config=configs/sst2.py [--workdir=DIR]`.

The config is checked before any work (tpjax/training/config_checks.py), then against the
stages already in the workdir (tpjax/training/fingerprint.py). The first lines printed say which
data source and which model the run uses. User errors (no data, a bad config value, a
workdir made with another config) print one paragraph and exit with code 2; a run
that stops on a NaN or a damaged checkpoint exits 1; Ctrl-C exits 130. See
tpjax/cli.py.
"""

# cli first: it makes Ctrl-C during the slow imports below exit 130.
from tpjax import cli  # pylint: disable=g-bad-import-order

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from tpjax.training import config_checks
from tpjax.training import parallel
from tpjax.training import train
from tpjax.data import glue
from tpjax.models import pretrained

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory; default runs/<config file name>.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete the workdir's stages that were trained with another "
    "config and train them again (without it, such a rerun refuses).")


def describe_model(config) -> str:
  """One line naming the model a config trains and where its weights come from.

  Args:
    config: A run config.

  Returns:
    E.g. "minilm-l6 (pretrained weights from /path/model)".
  """
  directory = pretrained.resolve(config.model.name)
  if config.model.random_init:
    weights = "random weights, architecture"
  elif config.init_from:
    weights = f"weights from {config.init_from}/finetune, architecture"
  else:
    weights = "pretrained weights"
  return f"{config.model.name} ({weights} from {directory})"


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as err:
    raise OSError(f"Cannot use workdir {workdir!r}: {err.strerror or err}. Pass "
                  "--workdir=DIR with a folder you can write to.") from err


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_path = flags.FLAGS["config"].config_filename
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"Config file {config_path!r} not found (run from the "
                            "checkout, e.g. --config=configs/sst2.py).")
  config = _CONFIG.value
  config_checks.validate(config)
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  _make_workdir(workdir)
  # Joined before the log opens: each process of a multi-host job logs to its own file.
  parallel.maybe_initialize_distributed(config)
  process = jax.process_index()
  logging.get_absl_handler().use_absl_log_file(
      "train" if process == 0 else f"train-process{process}", workdir)
  data = glue.describe_source(config.task, config.data.glue_dir or None,
                              config.data.source)
  lines = [f"Data: {data}", f"Model: {describe_model(config)}",
           f"Stages: {', '.join(config.stages)} (pruning: {config.pruning.method}); "
           f"workdir {workdir}, log {workdir}/train.INFO"]
  for line in lines:
    print(line, flush=True)
    logging.info("%s", line)
  logging.info("Config:\n%s", config)
  try:
    summary = train.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value)
  except train.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
  print(f"Done: {summary['task']} ({summary['method']}) dev {summary['dev']} "
        f"in {summary['wall_time_s']:.0f}s; summary in {workdir}/summary.json")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, "tpjax.main")
