"""One line for errors whose text runs to kilobytes (TensorStore, Orbax).

TensorStore, which reads and writes Orbax's arrays, appends the JSON spec of
the store that failed to its errors (`[tensorstore_spec='{...}']`, some 60
lines pretty-printed), and Orbax logs one failed write at several levels of
its stack, each time with the whole text. What went wrong is said at the
start and the end of that text (the operation, then the OS error); the
spec and the middle go to the debug log (`--v=1`).
"""

import logging as std_logging
import re

from absl import logging

_SPEC = re.compile(r"\s*\[tensorstore_spec='.*?'\]", re.DOTALL)
# Characters a shortened error keeps: its start and (more of) its end,
# where TensorStore puts the OS error ("No space left on device").
LIMIT = 320
_HEAD = 120


def one_line(text: str, limit: int = LIMIT) -> str:
  """`text` without TensorStore's spec, in one line of at most `limit`."""
  text = " ".join(_SPEC.sub("", str(text)).split())
  if len(text) <= limit:
    return text
  head = min(_HEAD, limit // 3)
  tail = limit - head - 5
  return f"{text[:head].rstrip()} ... {text[-tail:].lstrip()}"


def shorten_record(record: std_logging.LogRecord) -> None:
  """Makes a log record one line; its full text goes to the debug log."""
  message = record.getMessage()
  short = one_line(message)
  if short == message:
    return
  logging.debug("In full: %s", message)
  record.msg, record.args = short, ()
