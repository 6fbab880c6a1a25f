"""Fault injection: every way issue 14 found to get a silent wrong result, and SIGKILLs.

One tiny run (4-layer random encoder, 12 steps, one device) is the reference; faults
are injected into copies of runs and into the loop, and each test asserts what the
user now gets: an error naming the field or the file, an exit code, files on disk
left as they were, or a resumed run equal to the reference.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import helpers
from tests import xla_env
from tpjax.training import checkpoints
from tpjax import cli
from tpjax.training import config_checks
from tpjax.training import errors
from tpjax.training import fingerprint
from tpjax.training import train
from tpjax.data import glue
from tpjax.inference import loading
from tpjax.models import classifier
from tpjax.models import hf_weights
from tpjax.models import pretrained

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = 12


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
  return helpers.write_sst2(str(tmp_path_factory.mktemp("glue")), n_train=48, n_dev=8)


def _config(glue_dir, devices=1, per_device=4):
  """12 steps, a checkpoint and a dev evaluation every 4, one bucket (fewer compiles).

  No dropout: each device draws its own masks, so runs on different device counts
  could not be compared step by step.
  """
  config = helpers.tiny_config(glue_dir, max_steps=_STEPS, log_every_steps=1,
                               checkpoint_every_steps=4, eval_every_steps=4)
  config.num_devices = devices
  config.data.buckets = (32,)
  config.data.per_device_batch_size = per_device
  config.data.per_device_eval_batch_size = 8
  config.data.max_eval_examples = 8
  config.stage_settings.finetune.num_epochs = 2
  config.model.overrides.hidden_dropout_prob = 0.0
  config.model.overrides.attention_probs_dropout_prob = 0.0
  return config


def _rows(workdir):
  with open(os.path.join(workdir, "finetune", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _checkpoint(workdir, kind="latest"):
  """The newest step of finetune/<kind>/ as nested dicts, read with orbax directly."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "finetune", kind))
  state = manager.restore(manager.latest_step())
  manager.close()
  return state


def _assert_trees_equal(ours, theirs):
  """Same structure and bit-identical leaves; a tree with a leaf missing fails."""
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_array_equal(a, b)


def _listing(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, dirs, files in os.walk(directory) for name in dirs + files)


@pytest.fixture(scope="module")
def reference(glue_dir, tmp_path_factory):
  """An uninterrupted run: its workdir."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.train_and_evaluate(_config(glue_dir), workdir)
  return workdir


@pytest.fixture(scope="module")
def interrupted(glue_dir, tmp_path_factory):
  """A run stopped (as by Ctrl-C) at step 6: latest/ holds step 6, best/ step 4."""
  workdir = str(tmp_path_factory.mktemp("interrupted"))
  original = train._StopRequest  # pylint: disable=protected-access
  train._StopRequest = lambda: helpers.StopAfter(6)  # pylint: disable=protected-access
  try:
    with pytest.raises(train.Interrupted, match="step 6"):
      train.train_and_evaluate(_config(glue_dir), workdir)
  finally:
    train._StopRequest = original  # pylint: disable=protected-access
  assert "6" in os.listdir(os.path.join(workdir, "finetune", "latest"))
  return workdir


def _copy(workdir, tmp_path, name="copy"):
  target = str(tmp_path / name)
  shutil.copytree(workdir, target)
  return target


def _largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory)
           for name in names]
  return max(files, key=os.path.getsize)


# ------------------------------------------------------- numbers that must be finite


def test_max_length_above_positions_is_refused_before_any_work(glue_dir, tmp_path):
  config = _config(glue_dir)
  config.data.max_length = 600  # MiniLM has 512 positions
  workdir = tmp_path / "run"
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.data.max_length=600 .*2 to 512, the positions"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_nan_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(
    glue_dir, tmp_path, monkeypatch):
  real_step = train.train_step

  def poisoned(state, batch, rng, teacher, reduce, **kwargs):
    """Step 6 onwards goes NaN, parameters and loss, as a diverging run does."""
    new, metrics = real_step(state, batch, rng, teacher, reduce, **kwargs)
    bad = state.step >= 5
    metrics["loss"] = jnp.where(bad, jnp.nan, metrics["loss"])
    params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
    return new.replace(params=params), metrics

  monkeypatch.setattr(train, "train_step", poisoned)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.RunFailed) as err:
    train.train_and_evaluate(_config(glue_dir), workdir)
  message = str(err.value)
  assert isinstance(err.value, train.NonFiniteError)
  assert "Stage finetune, step 6: loss nan" in message
  assert f"{workdir}/finetune/latest/4" in message
  stage = os.path.join(workdir, "finetune")
  assert sorted(os.listdir(os.path.join(stage, "latest"))) == ["4", checkpoints.CHECKSUMS]
  assert checkpoints.verify(os.path.join(stage, "latest"), 4) is None
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  rows = _rows(workdir)
  assert max(r["step"] for r in rows) == 5
  assert all(np.isfinite(r["loss"]) for r in rows if r["split"] == "train")


def test_nan_logits_are_never_reported(glue_dir, tmp_path, monkeypatch):
  real_eval = train.eval_step

  def poisoned(params, batch, **kwargs):
    out = real_eval(params, batch, **kwargs)
    return {**out, "logits": out["logits"] * jnp.nan}

  monkeypatch.setattr(train, "eval_step", poisoned)
  config = _config(glue_dir)
  config.train.max_steps = 4
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.RunFailed,
                     match="Stage finetune, step 4, validation: 8 of 8 examples get "
                           "non-finite logits"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  assert not os.path.exists(os.path.join(workdir, "finetune", "best", "4"))
  assert all(r["split"] == "train" for r in _rows(workdir))


# ------------------------------------------------------------ a run is what it says


def test_rerun_with_another_config_refuses_and_keeps_config_json(
    reference, glue_dir, tmp_path):
  workdir = _copy(reference, tmp_path)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    config_json = f.read()
  config = _config(glue_dir)
  config.pruning.reg_lambda = 0.3
  with pytest.raises(fingerprint.RunMismatchError) as err:
    train.train_and_evaluate(config, workdir)
  message = " ".join(str(err.value).split())
  assert "stage(s) finetune trained with another config" in message
  assert "pruning.reg_lambda: 0.05 there, 0.3 now" in message
  assert "--overwrite" in message and f"--config.init_from={workdir}" in message
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == config_json
  # --overwrite deletes the stage that differs instead (training it again is the
  # ordinary path, tested everywhere else).
  fingerprint.check_workdir(config, workdir, devices=1, overwrite=True)
  assert not os.path.exists(os.path.join(workdir, "finetune"))


def test_resume_on_another_device_count_keeps_the_global_batch(
    interrupted, reference, glue_dir, tmp_path):
  workdir = _copy(interrupted, tmp_path)
  summary = train.train_and_evaluate(_config(glue_dir, devices=2), workdir)
  assert summary["devices"] == 2 and summary["global_batch"] == 4
  ours = {r["step"]: r["loss"] for r in _rows(workdir) if r["split"] == "train"}
  theirs = {r["step"]: r["loss"] for r in _rows(reference) if r["split"] == "train"}
  assert sorted(ours) == sorted(theirs) == list(range(1, _STEPS + 1))
  assert max(abs(ours[s] - theirs[s]) for s in ours) <= 1e-5
  # A device count that cannot split the global batch is refused.
  with pytest.raises(fingerprint.RunMismatchError, match="global batch of 4 on 1 "
                     "device.*3 devices cannot split"):
    fingerprint.check_workdir(_config(glue_dir, devices=3), interrupted, devices=3)


# ------------------------------------------------------------- verified checkpoints


def test_flipped_byte_in_latest_falls_back_to_best_and_ends_identical(
    interrupted, reference, glue_dir, tmp_path, capsys):
  workdir = _copy(interrupted, tmp_path)
  path = _largest_file(os.path.join(workdir, "finetune", "latest", "6"))
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))
  train.train_and_evaluate(_config(glue_dir), workdir)
  assert "latest/6 is damaged" in capsys.readouterr().out
  assert os.path.isdir(os.path.join(workdir, "finetune", "latest.corrupt-6"))
  assert _rows(workdir) == _rows(reference)
  _assert_trees_equal(_checkpoint(workdir), _checkpoint(reference))


def test_truncated_checkpoint_without_fallback_is_one_sentence(
    interrupted, glue_dir, tmp_path):
  workdir = _copy(interrupted, tmp_path)
  path = _largest_file(os.path.join(workdir, "finetune", "latest", "6"))
  os.truncate(path, os.path.getsize(path) // 2)
  shutil.rmtree(os.path.join(workdir, "finetune", "best"))
  with pytest.raises(errors.RunFailed) as err:
    train.train_and_evaluate(_config(glue_dir), workdir)
  message = str(err.value)
  assert "\n" not in message and len(message) < 600
  assert f"{workdir}/finetune/latest/6 is damaged" in message
  assert "no best/ checkpoint to fall back to" in message
  # The command line prints it as one paragraph, exit 1, no traceback.
  text = cli.user_error_paragraph("tpjax.main", err.value, parsing=False)
  assert " ".join(text.split()).startswith(f"tpjax.main: stopped: Checkpoint {workdir}")


def test_init_from_starts_from_the_other_runs_best_weights(reference, glue_dir,
                                                          tmp_path):
  # At learning rate 0 the one step leaves the weights as they were loaded.
  config = _config(glue_dir)
  config.init_from = reference
  config.train.max_steps = 1
  config.stage_settings.finetune.learning_rate = 0.0
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  loaded = _checkpoint(workdir)["params"]["model"]
  best = _checkpoint(reference, "best")["params"]["model"]
  _assert_trees_equal(loaded, best)
  # The fine-tuned weights are not the initial ones, so the check above has teeth.
  fresh = classifier.build(config, 2, jax.random.PRNGKey(config.seed))[1]
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(fresh), jax.tree.leaves(best), strict=True))


def test_damaged_best_is_not_predicted_with(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  best = os.path.join(workdir, "finetune", "best")
  step = [d for d in os.listdir(best) if d.isdigit()][0]
  path = _largest_file(os.path.join(best, step))
  os.truncate(path, os.path.getsize(path) - 7)
  with pytest.raises(errors.RunFailed, match=f"best/{step} is damaged"):
    loading.load_run(workdir)


# ---------------------------------------------------------------- validated inputs


@pytest.mark.parametrize("field,value,allowed", [
    ("stage_settings.finetune.num_epochs", -1.0, "a number above 0"),
    ("num_devices", -1, "0 for all devices"),
    ("data.max_length", 0, "an integer of at least 2"),
    ("data.per_device_batch_size", 0, "an integer of at least 1"),
    ("train.log_every_steps", 0, "an integer of at least 1"),
])
def test_bad_config_value_names_field_value_and_allowed(glue_dir, tmp_path, field,
                                                        value, allowed):
  config = _config(glue_dir)
  *parents, name = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(config_checks.ConfigError) as err:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert f"config.{field}={value!r} is not allowed ({allowed}" in str(err.value)
  assert not (tmp_path / "run").exists()


def test_more_devices_than_present_and_zero_labels_are_refused(glue_dir, tmp_path):
  config = _config(glue_dir, devices=16)
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.num_devices=16 is not allowed .*the 8 device"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="num_labels=0 is not allowed"):
    pretrained.load_pretrained("minilm-l6", num_labels=0)


def test_non_utf8_tsv_names_file_line_and_byte_offset(tmp_path):
  folder = tmp_path / "SST-2"
  folder.mkdir()
  path = folder / "train.tsv"
  path.write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff byte\t1\n")
  with pytest.raises(ValueError) as err:
    glue.load_tsv("sst2", "train", str(tmp_path))
  assert str(err.value).startswith(
      f"{path}:3: not valid UTF-8: byte 0xff at byte offset 26 of the file (byte 4 of "
      "the line)")


def test_trailing_blank_lines_in_tsv_are_ignored(tmp_path):
  folder = tmp_path / "SST-2"
  folder.mkdir()
  (folder / "train.tsv").write_bytes(b"sentence\tlabel\nfine\t1\ndull\t0\n\n\r\n")
  examples = glue.load_tsv("sst2", "train", str(tmp_path))
  assert examples.text_a == ["fine", "dull"]


def test_truncated_safetensors_names_the_file(tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  path = tmp_path / hf_weights.SAFETENSORS
  st_numpy.save_file({"w": np.ones((64, 64), np.float32)}, str(path))
  os.truncate(path, os.path.getsize(path) // 2)
  with pytest.raises(hf_weights.WeightImportError,
                     match=f"{path} cannot be read .*truncated or damaged"):
    hf_weights.read_checkpoint(str(tmp_path))


# ---------------------------------------------------------------- errors for people


def _main(*args, **popen):
  env = dict(os.environ, XLA_FLAGS=xla_env.flags(), JAX_PLATFORMS="cpu")
  env.pop(cli.TRACEBACK_ENV, None)
  return subprocess.Popen([sys.executable, "-m", "tpjax.main", *args], cwd=_ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **popen)


def test_user_error_is_one_paragraph_and_exit_2(glue_dir, tmp_path):
  # Refused before any work, so in this process (test_main's first-lines test is the
  # real process that exits 2).
  code, _, stderr = helpers.run_cli("tpjax.main", "--config=configs/tiny.py",
                                    f"--workdir={tmp_path}/run",
                                    f"--config.data.glue_dir={glue_dir}",
                                    "--config.data.per_device_batch_size=0")
  assert code == 2, stderr
  assert "Traceback" not in stderr and "\n\n" not in stderr.strip()
  assert "config.data.per_device_batch_size=0 is not allowed" in " ".join(stderr.split())
  assert not (tmp_path / "run").exists()


def test_ctrl_c_during_start_up_exits_130(glue_dir, tmp_path):
  process = _main("--config=configs/tiny.py", f"--workdir={tmp_path}/run",
                  f"--config.data.glue_dir={glue_dir}")
  first = process.stdout.readline()  # "Data: ...": the model and data load next
  assert first.startswith("Data: ")
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr
  assert "Traceback" not in stderr


def test_run_failure_is_one_paragraph_and_exit_1(reference, glue_dir, tmp_path):
  # init_from a run whose best checkpoint is damaged stops with errors.RunFailed.
  source = _copy(reference, tmp_path, "damaged")
  best = os.path.join(source, "finetune", "best")
  step = [d for d in os.listdir(best) if d.isdigit()][0]
  path = _largest_file(os.path.join(best, step))
  os.truncate(path, os.path.getsize(path) - 7)
  process = _main("--config=configs/tiny.py", f"--workdir={tmp_path}/run",
                  f"--config.data.glue_dir={glue_dir}", f"--config.init_from={source}")
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 1, stderr
  assert "Traceback" not in stderr and "\n\n" not in stderr.strip()
  paragraph = " ".join(stderr.split())
  assert paragraph.startswith(f"tpjax.main: stopped: Checkpoint {best}/{step} is damaged")


# The reference run's config as a config file, so tpjax.main trains the same run.
_CONFIG_FILE = """
from tests import test_faults


def get_config():
  return test_faults._config({glue_dir!r})
"""


def _child_env():
  """The environment of training subprocesses: this session's compilation cache, which
  the in-process reference run filled with the same programs (the same 8 device flags
  are inherited), with every program kept, so later processes compile nothing."""
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop(cli.TRACEBACK_ENV, None)
  return env


def _train_rows(workdir):
  """How many train steps the run has logged so far."""
  metrics = os.path.join(workdir, "finetune", "metrics.jsonl")
  if not os.path.exists(metrics):
    return 0
  with open(metrics) as f:
    return sum('"split": "train"' in line for line in f)


def _wait_for_train_rows(process, workdir, count):
  """Waits until the run has logged `count` train steps (or has ended)."""
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if _train_rows(workdir) >= count:
      return
    time.sleep(0.05)


def test_ctrl_c_and_sigterm_checkpoint_exit_130_and_the_rerun_resumes(
    reference, glue_dir, tmp_path):
  """Ctrl-C in training, then SIGTERM in the rerun: each saves its step and exits 130;
  the rerun went on from the first stop exactly as the uninterrupted run did."""
  config_file = tmp_path / "faults_config.py"
  config_file.write_text(_CONFIG_FILE.format(glue_dir=glue_dir))
  workdir = str(tmp_path / "run")
  env = _child_env()
  command = [sys.executable, "-m", "tpjax.main", f"--config={config_file}",
             f"--workdir={workdir}"]
  stopped = [0]
  for sig in (signal.SIGINT, signal.SIGTERM):
    process = subprocess.Popen(command, cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_train_rows(process, workdir, stopped[-1] + 1)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, f"{sig!r}: {stderr[-3000:]}"
    assert "Traceback" not in stderr
    step = max(int(d) for d in os.listdir(os.path.join(workdir, "finetune", "latest"))
               if d.isdigit())
    assert f"Stopped at step {step} of stage finetune" in stderr
    assert stopped[-1] < step < _STEPS, (sig, step)  # the rerun resumed and went on
    stopped.append(step)
  # Every step logged once, each as in the uninterrupted run.
  assert _rows(workdir) == [r for r in _rows(reference) if r["step"] <= stopped[-1]]


def test_prediction_never_writes_inside_a_run(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  # A run still in its first stage: the later stages have no folder yet.
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["stages"] = ["finetune", "soft", "hard"]
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  before = _listing(workdir)
  loading.load_run(workdir)
  assert _listing(workdir) == before


def test_predict_flags_are_checked(reference):
  # Refused before the run is read, so in this process.
  code, stdout, stderr = helpers.run_cli("tpjax.predict", f"--workdir={reference}",
                                         "--batch_size=0")
  assert code == 2, stderr
  assert stdout == "" and "Traceback" not in stderr
  assert "--batch_size=0 is not allowed" in " ".join(stderr.split())


# ------------------------------------------------------------- SIGKILL, then resume

_CHILD = """
import sys
from tests import test_faults
from tpjax.training import train
train.train_and_evaluate(test_faults._config(sys.argv[1]), sys.argv[2])
"""


# Logged steps after which a run is killed: before the first checkpoint (the rerun
# starts again), as step 4's evaluation and checkpoint are written, and between two
# checkpoints (the rerun goes back to step 4 and logs 5-7 again).
_KILL_AFTER = (1, 4, 7)


def test_sigkill_then_resume_is_bit_identical(reference, glue_dir, tmp_path):
  """SIGKILL after a number of logged steps, then rerun, for each of `_KILL_AFTER`.

  The runs start together (their start-ups overlap) and share the session's
  compilation cache; this process resumes them, as it resumes the runs of the tests
  above, to keep the test to a minute.
  """
  env = _child_env()
  want_rows = _rows(reference)
  want_state = _checkpoint(reference)
  children = {str(tmp_path / f"killed_after_{n}"): n for n in _KILL_AFTER}
  running = {workdir: subprocess.Popen([sys.executable, "-c", _CHILD, glue_dir, workdir],
                                       cwd=_ROOT, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
             for workdir in children}
  ended, deadline = [], time.time() + 300
  while running and time.time() < deadline:
    for workdir, child in list(running.items()):
      if child.poll() is None and _train_rows(workdir) < children[workdir]:
        continue
      child.send_signal(signal.SIGKILL)
      if child.wait() != -signal.SIGKILL:
        ended.append(workdir)
      del running[workdir]
    time.sleep(0.05)
  for child in running.values():
    child.kill()
    child.wait()
  assert not running, f"no kill point reached in 300 s: {sorted(running)}"
  assert not ended, f"runs that ended before the kill: {ended}"
  workdirs = list(children)
  for workdir in workdirs:
    train.train_and_evaluate(_config(glue_dir), workdir)
  for workdir in workdirs:
    rows = _rows(workdir)
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), f"{workdir}: duplicate rows"
    assert rows == want_rows, workdir
    _assert_trees_equal(_checkpoint(workdir), want_state)
