"""tpjax.main as a new user meets it: first lines, user errors, the TFDS fallback.

Errors raised before any work run the command in this process (helpers.run_cli);
the first-lines test is a real process, exit code 2 included.
"""

import os
import subprocess
import sys

import pytest

from tests import helpers
from tests import xla_env
from tpjax import cli
from tpjax.data import glue

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  """Runs `python -m tpjax.main` with `args` on one CPU device."""
  env = dict(os.environ, XLA_FLAGS=xla_env.flags(), JAX_PLATFORMS="cpu")
  env.pop(cli.TRACEBACK_ENV, None)
  return subprocess.run([sys.executable, "-m", "tpjax.main", *args], cwd=_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def _in_process(*args):
  """`_main(*args)` run by helpers.run_cli, as a CompletedProcess."""
  code, stdout, stderr = helpers.run_cli("tpjax.main", *args)
  return subprocess.CompletedProcess(args, code, stdout, stderr)


def _assert_one_paragraph(result, *needles):
  assert result.returncode == cli.USER_ERROR_EXIT_CODE == 2, result.stderr
  assert "Traceback" not in result.stderr
  paragraph = result.stderr.strip()
  assert paragraph.startswith("tpjax.main: ")
  assert "\n\n" not in paragraph
  assert "TPJAX_TRACEBACK=1" in paragraph
  for needle in needles:
    assert needle in " ".join(paragraph.split())


def test_mistyped_override_is_one_paragraph():
  result = _in_process("--config=configs/tiny.py", "--config.train.max_stepz=3")
  _assert_one_paragraph(result, "unknown config field 'max_stepz'",
                        'Did you mean "max_steps"')


def test_traceback_on_request(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  # Re-raised, not printed as a paragraph: Python prints the traceback, exit code 1.
  with pytest.raises(OSError, match="Cannot use workdir"):
    helpers.run_cli("tpjax.main", "--config=configs/tiny.py",
                    f"--workdir={blocker}/run", traceback=True)
  # Without the request the same error is one paragraph.
  _assert_one_paragraph(_in_process("--config=configs/tiny.py",
                                    f"--workdir={blocker}/run"), "Cannot use workdir")


def test_verbosity_asks_for_tracebacks(monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  for argv, wanted in ((["m", "--verbosity=1"], True), (["m", "-v", "2"], True),
                       (["m", "--verbosity=0"], False), (["m", "-v=x"], False),
                       (["m"], False)):
    assert (cli._verbosity_from_argv(argv) >= 1) == wanted, argv
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  assert cli.wants_traceback(["m"])


def test_paragraph_unwraps_config_key_errors():
  err = AttributeError(KeyError("'max_stepz'\nDid you mean \"max_steps\"?"))
  text = cli.user_error_paragraph("tpjax.main", err, parsing=True)
  assert " ".join(text.split()) == (
      "tpjax.main: bad command line: unknown config field 'max_stepz'. Did you mean "
      "\"max_steps\"? (Add --verbosity=1 or set TPJAX_TRACEBACK=1 to see the "
      "traceback.)")
  assert max(len(line) for line in text.splitlines()) <= 88


def test_first_lines_name_data_and_model(tmp_path):
  glue_dir = helpers.write_sst2(str(tmp_path / "glue"), n_train=8, n_dev=4)
  # init_from a folder that is no run fails after data and model are set up.
  (tmp_path / "not_a_run").mkdir()
  result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}/run",
                 f"--config.data.glue_dir={glue_dir}",
                 f"--config.init_from={tmp_path}/not_a_run")
  lines = result.stdout.splitlines()
  assert lines[0] == (f"Data: GLUE sst2 from TSV folder {glue_dir} "
                      "(config.data.glue_dir)")
  assert lines[1].startswith("Model: minilm-l6 (random weights, architecture from ")
  assert lines[2].startswith("Stages: finetune (pruning: none)")
  _assert_one_paragraph(result, "has no finetune/best checkpoint")


def test_bad_stage_name_is_refused_before_any_work(tmp_path):
  result = _in_process("--config=configs/tiny.py", f"--workdir={tmp_path}/run",
                       "--config.stages=('finetune_typo',)")
  assert result.stdout == "" and not (tmp_path / "run").exists()
  _assert_one_paragraph(result, "config.stages=('finetune_typo',) is not allowed")


def test_tfds_mock_data_builds_glue_sst2(monkeypatch):
  # Not skipped when tensorflow is missing: `make install` must provide it, since
  # TFDS is the fallback of a machine with no GLUE folder.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
  monkeypatch.setattr(glue, "DEFAULT_GLUE_DIRS", ())
  assert glue.describe_source("sst2").startswith("GLUE sst2 from TFDS glue/sst2 (")
  with tfds.testing.mock_data(num_examples=5):
    examples = glue.load_examples("sst2", "train")
  assert len(examples) == 5 and examples.text_b is None
  assert all(isinstance(text, str) for text in examples.text_a)
