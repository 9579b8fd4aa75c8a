"""The settings a workdir's generations were trained with.

Each checkpoint carries the config of the run that wrote it (under
`checkpoints.CONFIG_KEY` in its `progress` item), so that a workdir keeps
its settings when config.json is lost: deleted, emptied, or cut short.
`pipeline._check_workdir_config` compares a rerun with them
(`bind_to_checkpoints`), which rebuild a config.json that is missing or
damaged.
"""

import json
from typing import Any, Callable

import jax
from absl import logging
from etils import epath

from ban_jax import errors
from ban_jax.runtime import checkpoints
from ban_jax.runtime import files

# Where Orbax's JsonSave writes a step's `progress` item.
_PROGRESS_FILE = ("progress", "metadata")
# Fields a message names; more are only counted, so that a config.json that
# lost most of its fields does not fill the screen.
MAX_LISTED = 6


def read_config(path: epath.Path) -> tuple[dict[str, Any] | None, str | None]:
  """(config, None) from a config.json, or (None, what is wrong with it).

  What is wrong reads after the path: "is missing", "cannot be read (...)".
  Other OSErrors (permissions) are raised.
  """
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None, "is missing"
  try:
    config = json.loads(text)
  except ValueError as e:
    return None, f"cannot be read ({e})"
  if not isinstance(config, dict):
    return None, f"cannot be read (it holds {text.strip()[:20]!r})"
  if not config:
    return None, "cannot be read (it holds no settings: {})"
  return config, None


def _steps_newest_first(directory: epath.Path) -> list[epath.Path]:
  # Orbax names a step's folder by its number once the step is complete.
  steps = [p for p in directory.glob("*") if p.name.isdigit()]
  return sorted(steps, key=lambda p: int(p.name), reverse=True)


def checkpointed_config(directory: epath.Path
                        ) -> tuple[epath.Path, dict[str, Any]] | None:
  """(step folder, config) of the newest readable checkpoint in `directory`
  that carries its config; None if none does (or it has none yet)."""
  for step in _steps_newest_first(directory):
    try:
      progress = json.loads(step.joinpath(*_PROGRESS_FILE).read_text())
    except (OSError, ValueError):
      continue  # Unreadable: the checkpoint before it says the same.
    config = (progress.get(checkpoints.CONFIG_KEY)
              if isinstance(progress, dict) else None)
    if not isinstance(config, dict):
      return None  # Written before checkpoints carried their config.
    return step, config
  return None


def checkpointed_configs(workdir: epath.Path
                         ) -> list[tuple[epath.Path, dict[str, Any]]]:
  """(step folder, config) of every generation whose checkpoints carry one,
  in folder order (seed_*/gen_*)."""
  found = []
  for gen_dir in sorted(epath.Path(workdir).glob("seed_*/gen_*")):
    saved = checkpointed_config(gen_dir / "checkpoints")
    if saved is not None:
      found.append(saved)
  return found


def differences(saved: dict[str, Any], current: dict[str, Any],
                limit: int = MAX_LISTED, there: str = "there",
                now: str = "now") -> str:
  """`field: 'old' there, 'new' now; ...` for the dotted fields that differ
  (the first `limit` of them, by name)."""
  unset = "(unset)"
  changed = sorted(k for k in set(saved) | set(current)
                   if saved.get(k, unset) != current.get(k, unset))
  parts = [f"{k}: {saved.get(k, unset)!r} {there}, "
           f"{current.get(k, unset)!r} {now}" for k in changed[:limit]]
  if len(changed) > limit:
    parts.append(f"and {len(changed) - limit} more")
  return "; ".join(parts)


def bind_to_checkpoints(
    workdir: epath.Path, path: epath.Path,
    saved_config: dict[str, Any] | None, problem: str | None,
    settings: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any] | None:
  """The config that binds `workdir`: its checkpoints', else config.json's.

  Where the checkpoints carry their config, a config.json (at `path`, read
  as `saved_config`, or None and what is wrong with it: `problem`) that is
  missing, damaged or holds other settings is rebuilt from them, with a
  warning (process 0 writes it). `settings` maps a config to the settings
  compared (less the fields a rerun may change).

  Raises:
    ConfigError: the generations were trained with different settings
      (two runs at once in the workdir, before it was locked).
  """
  trained = checkpointed_configs(workdir)
  if not trained:
    return saved_config
  where, reference = trained[0]
  if saved_config is not None and settings(saved_config) != settings(
      reference):
    problem = ("does not hold the settings the checkpoints were trained "
               "with (" + differences(settings(reference),
                                      settings(saved_config),
                                      there="in the checkpoints",
                                      now="in it") + ")")
    saved_config = None
  if saved_config is None:
    logging.warning("%s %s; rebuilt from the config saved with %s.", path,
                    problem, where)
    if jax.process_index() == 0:
      files.write_atomically(path, json.dumps(reference, indent=2) + "\n")
  for other, other_config in trained[1:]:
    if settings(other_config) != settings(reference):
      raise errors.ConfigError(
          f"{other} was trained with other settings than {where} ("
          + differences(settings(other_config), settings(reference),
                        there="there", now="here")
          + f"): the generations in {workdir} do not belong together. Use a "
          "new --workdir.")
  return reference
