"""Orbax checkpoints of one generation: train state + JSON progress.

Each generation has its own CheckpointManager under
`<workdir>/seed_<s>/gen_<g>/checkpoints`. A checkpoint holds two items:
`state` (the student's TrainState; the teacher is never re-saved with it)
and `progress` (the epoch history and the running sums of the current
epoch, so that a resumed run logs exactly what an uninterrupted one would).
Orbax writes each step to a temporary folder and renames it when complete,
so a crash mid-save leaves the previous checkpoint as the latest; one that
is complete on disk but unreadable is skipped with a warning.
"""

from typing import Any

import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class GenerationCheckpoints:
  """Save and restore the checkpoints of one generation."""

  def __init__(self, directory: str | epath.Path, max_to_keep: int = 2):
    self.directory = epath.Path(directory)
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

  def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
    """Starts an asynchronous save; `wait` blocks until it is on disk."""
    self._manager.save(
        step, force=True,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                progress=ocp.args.JsonSave(progress)))

  def restore_latest(self, abstract_state: Any
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, progress) of the newest readable checkpoint, or None.

    A checkpoint that fails to restore (corrupt or truncated files) is
    skipped with a warning and the one before it is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                progress=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
            "Checkpoint %s/%d is unreadable (%s: %s); trying the previous "
            "one.", self.directory, step, type(e).__name__, e)
        continue
      return step, restored.state, dict(restored.progress)
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
