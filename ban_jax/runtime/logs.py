"""Log and exit handling of a run: one clear last line, no echo storms.

A run that fails for a reason the user can fix ends with one `ERROR:` line;
what Orbax and Python would add around it (per-save chatter, repeated
tracebacks, unraisable echoes of abandoned writes) is filtered here.
"""

import logging as std_logging
import os
import sys

from absl import logging

from ban_jax.runtime import short_errors


def install() -> None:
  """Filters Orbax's chatter from absl's log and its echoes from stderr."""
  logging.get_absl_handler().addFilter(quiet_orbax)
  sys.unraisablehook = unraisable


def quiet_orbax(record) -> bool:
  """Drops Orbax's per-save INFO chatter; its warnings and errors still show.

  Orbax logs a failed write at several levels of its stack, each with the
  same long traceback and TensorStore's kilobytes of detail; its warnings
  and errors keep one short line here (the rest goes to the debug log),
  and the program's own last message says what failed and how to go on.
  """
  if "/orbax/" not in record.pathname:
    return True
  if record.levelno >= std_logging.ERROR:
    record.exc_info = record.exc_text = None
  if record.levelno > std_logging.INFO:
    short_errors.shorten_record(record)
  return record.levelno > std_logging.INFO


def unraisable(unraisable) -> None:
  """Python's hook for exceptions nothing can catch, minus Orbax's echoes.

  After a failed checkpoint write Orbax closes its event loop while
  TensorStore is still finishing the step's other writes: each of those
  then fails to reach the closed loop ("Event loop is closed"), and at exit
  the abandoned write coroutines fail to import anything. Python prints
  every one as a traceback, dozens in all, that bury the error that counts.
  """
  message = str(unraisable.exc_value)
  if (message == "Event loop is closed"
      or "Python is likely shutting down" in message):
    return
  sys.__unraisablehook__(unraisable)


def exit_now(message: str) -> None:
  """Prints `message` and exits at once, with status 1.

  After a failed save Orbax's background threads can wait for signals of
  that save that never come, up to its 300 s coordination timeout, and
  Python waits for them before it exits: five idle minutes of a job's
  accelerators. Everything already saved is on disk by now.
  """
  logging.flush()
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access
