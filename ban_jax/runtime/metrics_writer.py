"""TensorBoard scalars of every generation, without TensorFlow.

`clu.metric_writers` writes through `tf.summary` and so imports TensorFlow,
which ban_jax does not need. This module writes the same event files with
TensorBoard's own writer (the `tensorboard` package, in requirements), and
keeps clu's interface (`write_scalars(step, scalars)`, `flush`, `close`) so
either can stand in for the other.

The pipeline writes one run per generation, `<workdir>/tensorboard/seed_<s>/
gen_<g>`, so `tensorboard --logdir <workdir>/tensorboard` overlays the
generations of a chain. The x axis is the optimiser step of the generation.
"""

import time
from typing import Any, Callable, Mapping

import jax
from absl import logging
from etils import epath

try:
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.summary.writer import event_file_writer
except ImportError:
  # tensorboard is in requirements.txt; a run without it still trains, with
  # no scalars (see `create`).
  event_file_writer = None

# Epoch-record keys that are not plotted: counters and the time estimate.
_NOT_SCALARS = ("epoch", "step", "seconds_left", "chain_seconds_left",
                "seconds")


class NullWriter:
  """Writes nothing: processes other than 0, or no TensorBoard installed."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def restart(self, step: int) -> None:
    del step

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class SummaryWriter:
  """Scalar summaries in TensorBoard event files under `logdir`.

  The event file is opened at the first write, so a generation that is only
  loaded, never trained, leaves no empty file behind.
  """

  def __init__(self, logdir: str | epath.Path):
    self.logdir = epath.Path(logdir)
    self._writer = None

  def _events(self):
    if self._writer is None:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._writer = event_file_writer.EventFileWriter(str(self.logdir))
    return self._writer

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()]
    self._events().add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary_pb2.Summary(value=values)))

  def restart(self, step: int) -> None:
    """Marks a resumed run: TensorBoard drops older events at >= `step`.

    A run killed after logging an epoch but before that epoch's checkpoint
    was on disk logs the epoch again when resumed; TensorBoard's readers
    discard everything at or after a SessionLog.START event's step, so the
    chart shows each step once.
    """
    self._events().add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def create(logdir: str | epath.Path) -> SummaryWriter | NullWriter:
  """A writer on process 0, a NullWriter elsewhere (one copy of each curve)."""
  if jax.process_index() != 0:
    return NullWriter()
  if event_file_writer is None:
    logging.warning("The tensorboard package is not installed: no "
                    "TensorBoard scalars (pip install tensorboard).")
    return NullWriter()
  return SummaryWriter(logdir)


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
  """Tags for one epoch record of `train.fit`'s history.

  `train_loss` -> `train/loss`, `test_accuracy` -> `test/accuracy`; the
  teacher comparisons, measured on the test split, go under `test/` too
  (`test/teacher_agreement`, `test/teacher_student_kl`); the rest
  (`learning_rate`, `images_per_second`) keep their names.
  """
  scalars = {}
  for key, value in record.items():
    if key in _NOT_SCALARS or not isinstance(value, (int, float)):
      continue
    if key.startswith(("train_", "test_")):
      split, name = key.split("_", 1)
      tag = f"{split}/{name}"
    elif key.startswith("teacher_"):
      tag = f"test/{key}"
    else:
      tag = key
    scalars[tag] = value
  return scalars


def epoch_callback(writer) -> Callable[[Mapping[str, Any]], None]:
  """`fit`'s on_epoch callback: each epoch record, as scalars at its step.

  The first record of a (possibly resumed) training marks a restart at its
  own step, which drops any copy of it and later epochs left by a run that
  was killed before their checkpoint was saved.
  """
  started = False

  def write(record):
    nonlocal started
    if not started:
      writer.restart(record["step"])
      started = True
    writer.write_scalars(record["step"], epoch_scalars(record))
    writer.flush()
  return write
