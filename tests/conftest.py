"""Test setup, before jax is imported anywhere: 8 simulated CPU devices, programs
compiled without LLVM's expensive passes (tests/xla_env.py) and a persistent
compilation cache.

The cache lives in `.cache/jax` at the repository root (ignored by git), so a test
that compiles a program an earlier test, session or CLI subprocess compiled loads it
instead. It is passed on through the environment: JAX reads these variables when it
is imported, here and in every subprocess a test launches. Set
JAX_COMPILATION_CACHE_DIR yourself to use another folder.

`make test` runs the files on 2 pytest-xdist workers (`--dist loadfile`: each file on
one worker, so module fixtures are built once); see `pytest_collection_modifyitems`.
Workers share the compilation cache: JAX's reader treats a damaged entry as a miss.
"""

import os

from tests import xla_env

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                           xla_env.flags(devices=8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"))
# Every program, however small: with LLVM's passes off, most compile in under JAX's
# default threshold (1 s), and the same ones recur across tests and subprocesses.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# The slowest files (CI durations, 2-core machine), slowest first. Under xdist each
# file is one unit of work, handed out in collection order: starting the long ones
# first keeps one worker from finishing minutes before the other.
_SLOW_FIRST = ("test_faults.py", "test_train.py", "test_multihost.py",
               "test_decoder_parity.py", "test_top.py", "test_notebooks.py",
               "test_engine.py", "test_predict.py", "test_sdtp_decoder_eval.py",
               "test_ltp_pipeline.py", "test_sdtp_decoder.py", "test_sdtp_encoder.py",
               "test_sweeps.py", "test_precision.py")


def pytest_collection_modifyitems(config, items):
  if not hasattr(config, "workerinput"):  # one process: keep pytest's order
    return
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
