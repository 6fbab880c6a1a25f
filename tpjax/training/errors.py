"""Failures a run explains itself (one paragraph, exit code 1, no traceback)."""


class RunFailed(RuntimeError):
  """A run stopped for a reason its message states: a NaN loss, a damaged checkpoint.

  Not a user error (exit 2) nor a bug (traceback): the message says what happened,
  what was kept and how to go on.
  """
