"""What the command-line tools do with errors: one paragraph for user mistakes.

An unknown flag, a bad flag or config value (a mistyped `--config.` override), a
missing data folder or an unusable workdir is not a bug, so the user gets one readable
paragraph on stderr and exit code 2 instead of a traceback. A run that stops for a
reason it explains (a NaN loss, a damaged checkpoint; `errors.RunFailed`) prints its
paragraph and exits 1.
Ctrl-C exits 130, also while the tool is still starting. `--verbosity=1` (absl's
flag) or `TPJAX_TRACEBACK=1` shows the traceback too, for bug reports.

    if __name__ == "__main__":
      cli.run(main)
"""

import os
import signal
import sys
import textwrap
from typing import Callable, Sequence

from absl import app
from absl import flags

from tpjax.training import errors
from tpjax.data import glue

# Set to 1 to get tracebacks for user errors as well.
TRACEBACK_ENV = "TPJAX_TRACEBACK"
USER_ERROR_EXIT_CODE = 2
RUN_FAILED_EXIT_CODE = 1
INTERRUPTED_EXIT_CODE = 130

# Errors of the user's inputs once flags are parsed: files and folders, data, values.
_USER_ERRORS = (glue.GlueDataError, OSError, ValueError)


def _interrupted_while_starting(signum, frame):
  del signum, frame
  print("Interrupted while starting; nothing was written.", file=sys.stderr)
  raise SystemExit(INTERRUPTED_EXIT_CODE)


# Entry points (`python -m tpjax.X`) import this module before their heavy imports;
# Python's own Ctrl-C there would end the process by the signal (exit -2), not 130.
# `run` puts the usual KeyboardInterrupt back once the tool starts.
_MAIN_SPEC = getattr(sys.modules.get("__main__"), "__spec__", None)
if _MAIN_SPEC is not None and _MAIN_SPEC.name.startswith("tpjax."):
  signal.signal(signal.SIGINT, _interrupted_while_starting)


def _verbosity_from_argv(argv: Sequence[str]) -> int:
  """absl's --verbosity/-v value from raw argv (flags may have failed to parse)."""
  for i, arg in enumerate(argv):
    for name in ("--verbosity", "-v"):
      if arg == name and i + 1 < len(argv):
        value = argv[i + 1]
      elif arg.startswith(name + "="):
        value = arg[len(name) + 1:]
      else:
        continue
      try:
        return int(value)
      except ValueError:
        return 0
  return 0


def wants_traceback(argv: Sequence[str]) -> bool:
  """True when the user asked for tracebacks (env var or --verbosity >= 1)."""
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  if flags.FLAGS.is_parsed():
    return flags.FLAGS.verbosity >= 1
  return _verbosity_from_argv(argv) >= 1


def _innermost_text(err: BaseException) -> str:
  """The message of `err`, unwrapped from exceptions that only wrap another.

  ml_collections raises AttributeError(KeyError("'name'\\nDid you mean ...")) for a
  mistyped field; the text worth showing is the KeyError's string, not its repr.
  """
  while err.args and isinstance(err.args[0], BaseException):
    err = err.args[0]
  if len(err.args) == 1 and isinstance(err.args[0], str):
    text = err.args[0]
  else:
    text = str(err)
  if isinstance(err, KeyError):
    first, _, rest = text.partition("\n")
    text = f"unknown config field {first}. {rest}"
  return " ".join(text.split())


def user_error_paragraph(program: str, err: BaseException, parsing: bool) -> str:
  """The paragraph printed for a user error.

  Args:
    program: Module name shown first, e.g. 'tpjax.main'.
    err: The exception.
    parsing: Whether it happened while parsing the command line.

  Returns:
    Text wrapped to 88 columns, ending with how to get the traceback.
  """
  lead = ("bad command line" if parsing else
          "stopped" if isinstance(err, errors.RunFailed) else "error")
  text = (f"{program}: {lead}: {_innermost_text(err)} (Add --verbosity=1 or set "
          f"{TRACEBACK_ENV}=1 to see the traceback.)")
  return textwrap.fill(text, width=88, break_on_hyphens=False, break_long_words=False)


def run(main: Callable[[list[str]], None], program: str | None = None) -> None:
  """`app.run(main)`, turning user errors into one paragraph and exit code 2.

  Every exception raised while flags are parsed (a mistyped config override, a bad
  value) is a user error; after that, data, file and value errors are. A
  `errors.RunFailed` prints its paragraph and exits 1; Ctrl-C exits 130.

  Args:
    main: The absl main function.
    program: Name that starts each message, e.g. 'tpjax.main'; default: the
      script's file name.
  """
  program = program or os.path.basename(sys.argv[0])
  argv = list(sys.argv)
  if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    # absl's own parser prints its message and exits 1, the code of a failed run;
    # parsing with FLAGS directly lets an unknown flag or a bad value reach the
    # handler below as a user error.
    app.run(main, flags_parser=lambda args: flags.FLAGS(args))
  except KeyboardInterrupt:
    print(f"{program}: interrupted.", file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_CODE)
  except Exception as err:  # pylint: disable=broad-except
    parsing = not flags.FLAGS.is_parsed()
    failed = isinstance(err, errors.RunFailed)
    if not (parsing or failed or isinstance(err, _USER_ERRORS)) or wants_traceback(argv):
      raise
    print(user_error_paragraph(program, err, parsing), file=sys.stderr)
    sys.exit(RUN_FAILED_EXIT_CODE if failed and not parsing else USER_ERROR_EXIT_CODE)
