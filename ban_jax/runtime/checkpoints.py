"""Orbax checkpoints of one generation: train state + JSON progress.

Each generation has its own CheckpointManager under
`<workdir>/seed_<s>/gen_<g>/checkpoints`. A checkpoint holds two items:
`state` (the student's TrainState; the teacher is never re-saved with it)
and `progress` (the epoch history and the running sums of the current
epoch, so that a resumed run logs exactly what an uninterrupted one would)
and, under `CONFIG_KEY`, the config of the run that saved it: the settings
the generation was trained with, kept with it even if config.json is lost.
Orbax writes each step to a temporary folder and renames it when complete,
so a crash mid-save leaves the previous checkpoint as the latest; one that
is complete on disk but unreadable (or holds NaN/inf) is skipped with a
warning and moved aside to `<step>.unreadable`, so that training can write
that step again. A train state with NaN/inf values is never saved: the last
checkpoint on disk is always one to resume from.
"""

import contextlib
import json
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ban_jax.errors import CheckpointWriteError
from ban_jax.errors import NonFiniteStateError
from ban_jax.runtime import short_errors

# The run's config in each checkpoint's `progress` item.
CONFIG_KEY = "config"


# TensorStore, which writes Orbax's arrays, reports I/O failures as a
# ValueError whose message starts with an absl status code:
# "RESOURCE_EXHAUSTED: Error writing ...: No space left on device".
_TENSORSTORE_STATUS = re.compile(r"^[A-Z][A-Z_]+: ")


def _is_write_failure(error: Exception) -> bool:
  return isinstance(error, OSError) or (
      isinstance(error, ValueError)
      and bool(_TENSORSTORE_STATUS.match(str(error))))


def is_finite(tree) -> bool:
  """Whether every float in `tree` is finite.

  Reads this process's copy of each (replicated) array on the host: no
  compilation, and the save that follows copies the state to the host too.
  """
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    leaf = np.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.isfinite(leaf).all():
      return False
  return True


class GenerationCheckpoints:
  """Save and restore the checkpoints of one generation."""

  def __init__(self, directory: str | epath.Path, max_to_keep: int = 2,
               config: dict[str, Any] | None = None):
    """`config`, if given, is saved with every checkpoint (as JSON)."""
    self.directory = epath.Path(directory)
    self._config = None if config is None else json.loads(json.dumps(config))
    if "://" not in str(directory):
      # Orbax's TensorStore backend needs absolute local paths.
      self.directory = self.directory.resolve()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            cleanup_tmp_directories=True),
        item_names=("state", "progress"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def last_good_message(self) -> str:
    """Where a stopped run goes on from, for error messages."""
    last = self.latest_step()
    cure = ("a lower config.optim.learning_rate or smaller loss weights "
            "(config.distill.*_weight), or check the data")
    if last is None:
      return (f"No checkpoint of this generation was written yet. Try {cure}; "
              "the same --workdir takes the new settings as long as no "
              "generation in it has been checkpointed, else use a new one.")
    return (f"The last good checkpoint is {self.directory}/{last}; it is left "
            f"intact. Try {cure}, in a new --workdir (this one's checkpoints "
            "were trained with the current settings).")

  def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
    """Starts an asynchronous save; `wait` blocks until it is on disk.

    Raises:
      NonFiniteStateError: `state` has NaN or infinite values. Nothing is
        written, so the latest checkpoint stays the last good one. (A step's
        loss can be finite while its update overflows the weights.)
    """
    if not is_finite(state):
      raise NonFiniteStateError(
          f"The train state at step {step} has NaN or infinite values, so it "
          f"is not saved in {self.directory}. {self.last_good_message()}")
    # Orbax writes the JSON later, in a background thread, while the caller
    # goes on updating `progress`: save a snapshot of it as it is now.
    snapshot = json.loads(json.dumps(progress))
    if self._config is not None:
      snapshot[CONFIG_KEY] = self._config
    with self._write_failures_explained():
      self._manager.save(
          step, force=True,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  progress=ocp.args.JsonSave(snapshot)))

  def restore_latest(self, abstract_state: Any, max_step: int | None = None
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, progress) of the newest readable checkpoint, or None.

    A checkpoint that fails to restore (corrupt or truncated files) or holds
    NaN/inf is skipped with a warning, moved aside, and the one before it is
    tried. With several processes a step counts as readable only if every
    process read it, so that all of them resume from the same step.

    `max_step`: the newest at or before it; later steps are moved aside to
    `<step>.ahead` (seeds side by side resume from a step every seed has,
    and train the later ones again).
    """
    if max_step is not None:
      ahead = [step for step in self.all_steps() if step > max_step]
      if ahead:
        logging.info("Checkpoints %s/%s are ahead of the other seeds'; "
                     "moved to <step>.ahead.", self.directory, ahead)
        self._set_aside(ahead, "ahead")
    unreadable = []
    found = None
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                progress=ocp.args.JsonRestore()))
        if not is_finite(restored.state):
          raise NonFiniteStateError("the train state has NaN or inf values")
        problem = None
      except Exception as e:  # pylint: disable=broad-except
        problem = f"{type(e).__name__}: {e}"
        # TensorStore's errors end in the store's spec, 60 lines.
        logging.debug("Checkpoint %s/%d: %s", self.directory, step, problem)
        problem = short_errors.one_line(problem)
      problem = _problem_anywhere(problem)
      if problem is None:
        progress = dict(restored.progress)
        progress.pop(CONFIG_KEY, None)  # Saved from the constructor's.
        found = step, restored.state, progress
        break
      logging.warning(
          "Checkpoint %s/%d is unreadable (%s); moving it to %s/%d.unreadable "
          "and trying the previous one.", self.directory, step, problem,
          self.directory, step)
      unreadable.append(step)
    if unreadable:
      self._set_aside(unreadable)
    return found

  def _set_aside(self, steps: list[int], suffix: str = "unreadable"
                 ) -> None:
    """Renames unreadable steps, which Orbax then no longer lists.

    Left in place, an unreadable step would stop training when it reaches
    that step again (Orbax refuses to overwrite a step). Renaming, not
    deleting, keeps the files for a look if the read error was transient.
    """
    if jax.process_index() == 0:
      for step in steps:
        aside = self.directory / f"{step}.{suffix}"
        if aside.exists():
          aside.rmtree()
        (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set_aside:{self.directory}")
    self._manager.reload()

  def wait(self) -> None:
    with self._write_failures_explained():
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      with self._write_failures_explained():
        self._manager.close()  # Waits too: may raise the same failure.

  @contextlib.contextmanager
  def _write_failures_explained(self):
    """Turns a failed write into a CheckpointWriteError saying how to go on.

    Saves are asynchronous: the failure of one surfaces at the next save or
    wait. Orbax writes each step into a temporary folder and renames it only
    once complete (and removes leftover temporary folders when it next
    opens the directory), so every checkpoint already on disk stays whole.
    """
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not _is_write_failure(e):
        raise
      self._manager.reload()  # Forget the step that was not written.
      last = self.latest_step()
      resume = ("this generation has no complete checkpoint yet and will "
                "start again" if last is None else
                f"this generation will resume from step {last}")
      logging.debug("Checkpoint write failed: %s", e)
      raise CheckpointWriteError(
          f"Could not write a checkpoint in {self.directory}: "
          f"{short_errors.one_line(str(e))}. Nothing "
          f"already saved is lost: finished generations are kept and {resume}"
          ". Free some space (or fix the folder's permissions or quota) and "
          "rerun the same command.") from e


def _problem_anywhere(problem: str | None) -> str | None:
  """This process's read problem, or another process's if it had one.

  Hosts that disagreed would resume from different steps, and only some of
  them would reach the barrier in `_set_aside`.
  """
  if jax.process_count() == 1:
    return problem
  failed = np.asarray(
      multihost_utils.process_allgather(np.int32(problem is not None)))
  if problem is None and failed.any():
    others = ", ".join(str(i) for i in np.flatnonzero(failed))
    return f"unreadable on process {others}"
  return problem
