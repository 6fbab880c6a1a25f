"""A benchmark system in its own process, driven by one JSON request per stdin line.

Shared by decoder_speed.py and sdtp_decoder_speed.py. The worker answers on stdout
with lines that start with `REPLY` (anything else a library prints there is skipped).
"""

import json
import os
import statistics
import subprocess
import sys
from typing import Callable, Optional

REPLY = "@@"
# XNNPACK matmuls on CPU: about 1.3x faster decoder prefill than XLA's default dot here
# (what `python -m tpjax.generate` sets too).
CPU_XLA_FLAGS = "--xla_cpu_use_xnnpack=true"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_env(tpjax: bool, **overrides: str) -> dict:
  """The environment of a worker: the checkout importable, JAX on CPU with
  CPU_XLA_FLAGS when `tpjax`, and `overrides`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **overrides)
  env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
  if tpjax:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + CPU_XLA_FLAGS).strip()
  return env


def pin(threads: int) -> None:
  """Worker side: run on the first `threads` CPUs this process may use."""
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def serve(handle: Callable[[dict], Optional[dict]]) -> None:
  """Worker side: says ready, then answers requests until `handle` returns None."""
  print(REPLY + json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    reply = handle(json.loads(line))
    if reply is None:
      return
    print(REPLY + json.dumps(reply), flush=True)


def spread(values) -> dict:
  """Median, min, max and count of per-round values."""
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "n": len(values)}


class Client:
  """Parent side: starts `command` and waits until it is ready."""

  def __init__(self, name: str, command: list[str], env: dict):
    self.name = name
    self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env)
    self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    raise RuntimeError(f"{self.name} worker exited with {self.proc.wait()}")

  def ask(self, **request) -> dict:
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
    self.proc.stdin.flush()
    self.proc.wait()
