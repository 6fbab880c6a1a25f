"""A benchmark system in its own process, driven by one JSON request per stdin line.

The worker answers on stdout with lines that start with `REPLY` (anything else a
library prints there is skipped). Used by decoder_speed.py and sdtp_decoder_speed.py.
"""

import json
import subprocess
import sys
from typing import Callable, Optional

REPLY = "@@"


def serve(handle: Callable[[dict], Optional[dict]]) -> None:
  """Worker side: says ready, then answers requests until `handle` returns None."""
  print(REPLY + json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    reply = handle(json.loads(line))
    if reply is None:
      return
    print(REPLY + json.dumps(reply), flush=True)


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
