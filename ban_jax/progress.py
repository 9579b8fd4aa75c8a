"""How long a run has left, and the progress bar of an epoch.

The progress line shows the time left in the current generation (train.py
measures it) and in the whole run, every generation of every seed, so that a
user knows from the first epoch what a row of the paper costs on their
hardware. `ChainClock` makes the second figure; `epoch_bar` draws a bar
inside each epoch on an interactive terminal only, since a log file or a CI
console would keep every redraw.
"""

import os
import sys
from typing import Any, Hashable, Iterable


class ChainClock:
  """The run's time left: its steps left times its measured seconds a step.

  The plan is the steps each generation of the run still has to train, by
  any hashable key (the pipeline's is (seed, generation)). A generation
  loaded finished from its checkpoints costs about nothing, so it enters
  the plan with 0; a resumed one is corrected by its first epoch
  (`epoch` gets its steps left), and one that ends is set to 0 (`done`).

  The rate is that of this run's epochs so far, less those that compiled
  (a trainer's first epoch): a minute of compilation in the first epoch
  would otherwise multiply into hours over a 200-epoch chain. Until a warm
  epoch is measured, the compiling ones are all there is.
  """

  def __init__(self, plan: Iterable[tuple[Hashable, int]]):
    self._left = dict(plan)
    self._warm = [0, 0.0]  # Steps, seconds.
    self._cold = [0, 0.0]

  def epoch(self, key: Hashable, steps: int, seconds: float,
            steps_left: int, compiled: bool = False) -> float:
    """Records an epoch of generation `key`: `steps` in `seconds`, after
    which it has `steps_left`; `compiled`: it included compilation.
    Returns the run's seconds left."""
    bucket = self._cold if compiled else self._warm
    bucket[0] += steps
    bucket[1] += seconds
    self._left[key] = steps_left
    return self.seconds_left()

  def done(self, key: Hashable) -> None:
    """Generation `key` is finished (trained or loaded)."""
    self._left[key] = 0

  def steps_left(self) -> int:
    return sum(self._left.values())

  def seconds_per_step(self) -> float | None:
    """The measured rate, or None before any epoch."""
    steps, seconds = self._warm if self._warm[0] else self._cold
    return seconds / steps if steps else None

  def seconds_left(self) -> float | None:
    rate = self.seconds_per_step()
    return None if rate is None else rate * self.steps_left()


def format_seconds(seconds: float) -> str:
  """h:mm:ss, or m:ss under an hour."""
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return (f"{hours}:{minutes:02d}:{secs:02d}" if hours
          else f"{minutes}:{secs:02d}")


def interactive(stream=None) -> bool:
  """Whether `stream` (default stderr) is a terminal a person watches.

  CI consoles often claim a terminal; they set CI, and a bar redrawn in
  them leaves one line per update.
  """
  stream = sys.stderr if stream is None else stream
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty()) and not os.environ.get("CI")


class _NoBar:
  """What `epoch_bar` gives where no bar is drawn."""

  def update(self, n: int = 1) -> None:
    del n

  def close(self) -> None:
    pass


def epoch_bar(num_steps: int, description: str, initial: int = 0,
              enabled: bool = True) -> Any:
  """A bar over an epoch's `num_steps` steps (`initial` of them already
  done, in a resumed epoch), with update(n) and close().

  Drawn only where `enabled` (process 0) and stderr is `interactive`;
  otherwise nothing is drawn and the plain progress lines are all there is.
  """
  if not (enabled and interactive()):
    return _NoBar()
  # Imported here: a run without a terminal never needs it.
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=num_steps, initial=initial, desc=description,
                   unit="step", leave=False, file=sys.stderr,
                   dynamic_ncols=True)
