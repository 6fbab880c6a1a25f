"""Records a finished fine-tune as its task's one baseline, or prints the baseline.

Every curve, table and plot of a task compares against one unpruned run, named in
benchmarks/results/baselines.json (`tpjax.results.files.task_baseline`); the sweep
scripts start from its workdir. Recording reads the run's summary.json: dev accuracy
(and F1 where the task selects on it), the held-out slice that chose its checkpoint,
epochs, learning rate and wall time, beside the command that made it.

    python -m tpjax.main --config=configs/sst2.py --workdir=runs/sst2_base \
        --config.stages='("finetune",)' --config.stage_settings.finetune.num_epochs=3
    python benchmarks/baseline.py --task=sst2 --workdir=runs/sst2_base \
        --command="python -m tpjax.main --config=configs/sst2.py ..."
    python benchmarks/baseline.py --task=sst2 --print=workdir    # for shell scripts
"""

import json
import os

from absl import flags

from tpjax import cli
from tpjax.data import glue
from tpjax.results import curves
from tpjax.results import files as result_files

_TASK = flags.DEFINE_enum("task", "sst2", list(glue.TASKS), "The task.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run with a finetune stage: "
                               "record it as the task's baseline.")
_COMMAND = flags.DEFINE_string("command", "", "The command(s) that made it.")
_EPOCHS = flags.DEFINE_float("epochs", None, "Its fine-tune epochs in all (default: its "
                             "finetune stage's; give it when it started from another run).")
_LOAD_LOG = flags.DEFINE_string("load_log", None, "A file of 1-minute load averages "
                                "sampled during the run, one per line: recorded as its "
                                "mean and max.")
_PRINT = flags.DEFINE_enum("print", None, ["workdir", "run"], "Only print this field "
                           "of the task's baseline.")
_RESULTS = flags.DEFINE_string("results", result_files.DEFAULT_DIR, "Results folder.")


def main(argv):
  del argv
  path = os.path.join(_RESULTS.value, result_files.BASELINES)
  if _PRINT.value:
    entry = result_files.task_baseline(_TASK.value, _RESULTS.value)
    if not entry:
      raise ValueError(f"{path} names no {_TASK.value} baseline; record one with "
                       "--workdir and --command.")
    print(entry[_PRINT.value])
    return
  if not _WORKDIR.value:
    raise ValueError("Pass --workdir (a run to record) or --print.")
  data = {"baselines": {}}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  data["baselines"][_TASK.value] = curves.baseline_entry(
      _TASK.value, _WORKDIR.value, _COMMAND.value, _EPOCHS.value, _LOAD_LOG.value)
  with open(path, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
  print(json.dumps(data["baselines"][_TASK.value], indent=2))


if __name__ == "__main__":
  cli.run(main)
