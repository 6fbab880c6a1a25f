"""What the command-line tools do with errors: one paragraph for user mistakes.

A missing data folder, a mistyped `--config.` override or an unusable workdir is not
a bug, so the user gets one readable paragraph on stderr and a non-zero exit instead
of a traceback. `--verbosity=1` (absl's flag) or `TPJAX_TRACEBACK=1` shows the
traceback too, for bug reports.

    if __name__ == "__main__":
      cli.run(main)
"""

import os
import sys
import textwrap
from typing import Callable, Sequence

from absl import app
from absl import flags

from tpjax.data import glue

# Set to 1 to get tracebacks for user errors as well.
TRACEBACK_ENV = "TPJAX_TRACEBACK"
USER_ERROR_EXIT_CODE = 1

# Errors of the user's inputs once flags are parsed: files and folders, data, values.
_USER_ERRORS = (glue.GlueDataError, OSError, ValueError)


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
  lead = "bad command line" if parsing else "error"
  text = (f"{program}: {lead}: {_innermost_text(err)} (Add --verbosity=1 or set "
          f"{TRACEBACK_ENV}=1 to see the traceback.)")
  return textwrap.fill(text, width=88, break_on_hyphens=False, break_long_words=False)


def run(main: Callable[[list[str]], None], program: str | None = None) -> None:
  """`app.run(main)`, turning user errors into one paragraph and exit code 1.

  Every exception raised while flags are parsed (a mistyped config override, a bad
  value) is a user error; after that, data, file and value errors are.

  Args:
    main: The absl main function.
    program: Name that starts each message, e.g. 'tpjax.main'; default: the
      script's file name.
  """
  program = program or os.path.basename(sys.argv[0])
  argv = list(sys.argv)
  try:
    app.run(main)
  except Exception as err:  # pylint: disable=broad-except
    parsing = not flags.FLAGS.is_parsed()
    if not (parsing or isinstance(err, _USER_ERRORS)) or wants_traceback(argv):
      raise
    print(user_error_paragraph(program, err, parsing), file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)
