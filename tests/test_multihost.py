"""Multi-host training with two real processes, against one process with 8 devices.

JAX's multi-controller runtime works on one machine: two `python -m tpjax.main`
processes of 4 simulated CPU devices each join through a coordinator on a free local
port (`config.coordinator_address`) and reduce over gloo, so the code a GPU cluster or
a TPU pod slice runs (`config.distributed`) runs here for real. The 2-process run
fine-tunes and trains an LTP soft stage, is killed (SIGKILL, both processes) in the
soft stage and resumed; it must end like an uninterrupted 1-process 8-device run in
every logged loss, dev metric and final parameter. A copy of the killed workdir
resumes on 1 process with 4 devices (per-device batch doubled, global batch kept).

The encoder has two layers (LTP prunes after layer 1): nothing here depends on depth,
and each of the four runs compiles its programs in about half the time of four layers.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import helpers
from tests import xla_env
from tpjax.training import checkpoints
from tpjax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_AT = 4     # soft-stage step whose checkpoint the killed run has written
SOFT_STEPS = 8  # 64 examples, global batch 16, two epochs
TOLERANCE = 1e-4

# Records every file process 1 opens for writing or renames, then runs tpjax.main.
_WORKER = """
import os, runpy, sys
record = open(sys.argv[1], "a")
def hook(event, args):
  if event == "open" and isinstance(args[0], str):
    mode, flags = args[1], args[2]
    writes = (any(c in mode for c in "wax+") if mode else
              bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    if writes:
      record.write(args[0] + "\\n"); record.flush()
  elif event == "os.rename":
    record.write(str(args[1]) + "\\n"); record.flush()
sys.addaudithook(hook)
sys.argv = ["tpjax.main"] + sys.argv[2:]
runpy.run_module("tpjax.main", run_name="__main__", alter_sys=True)
"""


def _overrides(glue_dir):
  return {"data.glue_dir": glue_dir, "data.source": "tsv", "data.buckets": (32,),
          "model.overrides.num_hidden_layers": 2,
          "train.progress_bar": False, "train.log_every_steps": 1,
          "train.eval_every_steps": 2, "train.checkpoint_every_steps": 2,
          "stages": ("finetune", "soft"), "pruning.method": "ltp",
          "pruning.temperature": 0.01, "pruning.final_threshold": 0.02,
          "stage_settings.soft.pruning_learning_rate": 1e-2,
          "stage_settings.soft.num_epochs": 2.0}


def _config(glue_dir, **extra):
  config = helpers.tiny_config(glue_dir)
  for key, value in {**_overrides(glue_dir), **extra}.items():
    *path, name = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  return config


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(glue_dir, workdir, record):
  """Starts the two processes of one job; returns their Popen objects."""
  port = _free_port()
  # Every program kept in the session's cache: the resumed job compiles nothing.
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": xla_env.flags(devices=4),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  flags = [f"--config.{k}={v}" for k, v in _overrides(glue_dir).items()]
  procs = []
  for i in range(2):
    with open(f"{workdir}.process{i}.out", "a") as out:
      procs.append(subprocess.Popen(
          [sys.executable, "-c", _WORKER, f"{record}{i}", "--config=configs/tiny.py",
           f"--workdir={workdir}", "--config.distributed=True",
           f"--config.coordinator_address=127.0.0.1:{port}",
           "--config.num_processes=2", f"--config.process_id={i}", *flags],
          cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, workdir, timeout=900):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"the 2-process job did not finish in {timeout}s:\n" + _tail(workdir))
  return [p.returncode for p in procs]


def _tail(workdir):
  """The last lines each process printed, for failure messages."""
  text = []
  for i in range(2):
    with open(f"{workdir}.process{i}.out") as f:
      lines = [line for line in f if "[Gloo]" not in line]
    text.append(f"process {i}:\n" + "".join(lines[-8:]))
  return "\n".join(text)


def _checkpointed_step(stage_dir):
  try:
    with open(os.path.join(stage_dir, "latest", checkpoints.CHECKSUMS)) as f:
      return json.load(f)["step"]
  except (OSError, ValueError, KeyError):
    return None


def _rows(workdir, stage):
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir):
  ckpts = checkpoints.StageCheckpoints(os.path.join(workdir, "soft"))
  state = ckpts.restore_latest(None)
  ckpts.close()
  assert int(state["step"]) == SOFT_STEPS
  return state["params"]


def _max_difference(a, b):
  """Largest |a - b| over numbers of two equal nested structures (dicts, lists)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert len(la) == len(lb) > 0
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             if np.size(x) else 0.0 for x, y in zip(la, lb))


def _numbers(rows):
  """The rows with their numeric values, keyed by (split, step)."""
  return {(r["split"], r["step"]): {k: v for k, v in r.items()
                                    if k not in ("split", "step")} for r in rows}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{'reference', 'two', 'one': workdir}, 'written': what process 1 wrote."""
  base = tmp_path_factory.mktemp("multihost")
  glue_dir = helpers.write_sst2(str(base / "glue"))
  reference = str(base / "reference")
  train.train_and_evaluate(_config(glue_dir), reference)

  two, record = str(base / "two"), str(base / "writes")
  procs = _launch(glue_dir, two, record)
  deadline = time.time() + 900
  while (_checkpointed_step(os.path.join(two, "soft")) or 0) < KILL_AT:
    if any(p.poll() is not None for p in procs) or time.time() > deadline:
      for p in procs:
        p.kill()
      pytest.fail(f"no soft checkpoint at step {KILL_AT} before the job ended:\n"
                  + _tail(two))
    time.sleep(0.05)
  for p in procs:
    p.kill()
  _wait(procs, two)
  assert not os.path.exists(os.path.join(two, "soft", "summary.json")), "killed too late"
  one = str(base / "one")
  shutil.copytree(two, one)

  codes = _wait(_launch(glue_dir, two, record), two)
  assert codes == [0, 0], _tail(two)
  config = _config(glue_dir, num_devices=4)
  summary = train.train_and_evaluate(config, one)
  assert config.data.per_device_batch_size == 4
  assert summary["devices"] == 4 and summary["global_batch"] == 16
  with open(f"{record}1") as f:
    written = [line.strip() for line in f]
  with open(f"{record}0") as f:
    written_by_0 = [line.strip() for line in f]
  return {"reference": reference, "two": two, "one": one, "written": written,
          "written_by_0": written_by_0}


def test_multihost_run_equals_one_process(runs):
  reference, run, name = runs["reference"], runs["two"], "two"
  for stage in ("finetune", "soft"):
    ours, theirs = _numbers(_rows(reference, stage)), _numbers(_rows(run, stage))
    assert sorted(theirs) == sorted(ours), f"{stage}: rows differ (lost or doubled)"
    diff = max(_max_difference(ours[k], theirs[k]) for k in ours)
    print(f"{name}, {stage}: max difference of logged losses and dev metrics {diff:.2e}")
    assert diff <= TOLERANCE
  assert len([k for k in ours if k[0] == "train"]) == SOFT_STEPS
  with open(os.path.join(reference, "summary.json")) as f:
    ours = json.load(f)
  with open(os.path.join(run, "summary.json")) as f:
    theirs = json.load(f)
  diff = _max_difference(ours["dev"], theirs["dev"])
  print(f"{name}: max difference of final dev metrics {diff:.2e}")
  assert diff <= TOLERANCE
  assert theirs["global_batch"] == 16
  diff = _max_difference(_final_params(reference), _final_params(run))
  print(f"{name}: max difference of final parameters {diff:.2e}")
  assert diff <= TOLERANCE


def test_multihost_run_resumes_on_one_process(runs):
  """Up to the kill the rows are the 2-process run's; after it, 4 devices draw other
  dropout masks than 8 (one stream per device), so only completeness is compared."""
  for stage in ("finetune", "soft"):
    ours = _numbers(_rows(runs["reference"], stage))
    theirs = _numbers(_rows(runs["one"], stage))
    assert sorted(theirs) == sorted(ours), f"{stage}: rows differ (lost or doubled)"
    done = [k for k in ours if stage == "finetune" or k[1] <= KILL_AT]
    diff = max(_max_difference(ours[k], theirs[k]) for k in done)
    print(f"one, {stage}: max difference up to the kill {diff:.2e}")
    assert diff <= TOLERANCE
    assert all(np.isfinite(v["loss"]) for k, v in theirs.items() if k[0] == "train")
  with open(os.path.join(runs["one"], "summary.json")) as f:
    summary = json.load(f)
  assert summary["global_batch"] == 16 and summary["devices"] == 4
  assert _final_params(runs["one"])  # a full soft stage, to its last step


def test_only_process_0_writes_records(runs):
  two = runs["two"]
  shared = ("metrics.jsonl", "summary.json", "config.json", "fingerprint.json",
            "best.json", "checksums.json", "events.out.tfevents")
  mine = [p for p in runs["written"] if p.startswith(two + os.sep)]
  bad = [p for p in mine if any(name in os.path.basename(p) for name in shared)]
  assert not bad, f"process 1 wrote {bad}"
  assert all("train-process1" in p or os.sep + "latest" in p or os.sep + "best" in p
             for p in mine), mine
  theirs = {os.path.basename(p) for p in runs["written_by_0"]}
  assert {"metrics.jsonl", "summary.json", "config.json", "best.json"} <= theirs
