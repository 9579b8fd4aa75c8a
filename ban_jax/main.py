r"""Command-line entry point: flags, logging, distributed init, the chain.

  python -m ban_jax.main --config=configs/cifar100.py --workdir=runs/c100

Every config field can be overridden, e.g. `--config.num_generations=2`.
Mistakes in the command (a misspelt field, an unknown model, missing data)
end the program with one message that says what is wrong and how to fix
it, and a non-zero exit status; nothing already on disk is touched.
"""

import logging as std_logging
import os
import pickle
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ban_jax import config_file
from ban_jax.runtime import short_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py[:arguments]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and reports; rerunning with "
    "the same workdir continues where the last run stopped.")
flags.mark_flags_as_required(["config", "workdir"])
# An unset shell variable (--workdir=$DIR) would otherwise mean the cwd.
flags.register_validator(
    "workdir", lambda value: value is None or bool(value.strip()),
    message="--workdir is empty; name the run's folder, e.g. "
    "--workdir=runs/digits.")


def _quiet_orbax(record) -> bool:
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


def _unraisable(unraisable) -> None:
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


def _config_spec(argv: list[str]) -> tuple[str, str] | None:
  """(path, argument) of `--config=PATH[:ARGUMENT]` (or `--config PATH`, as
  absl also takes it; the last one counts), or None if absent."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is None:
    return None
  path, _, argument = spec.partition(":")
  return path, argument


def _load_config_file(argv: list[str]):
  """The config named by --config, without overrides (for error messages)."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  return config_file.load(*spec)


def unknown_field_message(argv: list[str]) -> str | None:
  """Names the misspelt `--config.a.b` field and lists the valid ones."""
  try:
    config = _load_config_file(argv)
  except Exception:  # pylint: disable=broad-except
    return None  # The original error is clearer then.
  if config is None:
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    node, prefix = config, "config"
    for key in path:
      if not hasattr(node, "keys") or key not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
        return (f"Unknown config field {prefix}.{key} (in {arg}). Valid "
                f"fields of {prefix}: {valid}.")
      node, prefix = node[key], f"{prefix}.{key}"
  return None


def missing_config_message(argv: list[str]) -> str | None:
  """Names a --config file that does not exist, and where configs are."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  path = spec[0]
  if os.path.isfile(path):
    return None
  return (f"ERROR: config file {path!r} not found (relative paths are from "
          f"{os.getcwd()}). The configs are in the repository's configs/ "
          "folder, e.g. --config=configs/cifar100.py.")


def config_file_message(argv: list[str]) -> str | None:
  """Says why the --config file cannot be loaded (syntax, imports, no
  get_config), or None if it loads."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  try:
    config_file.load(*spec)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, AttributeError) and "'get_config'" in str(e):
      return (f"ERROR: config file {spec[0]!r} has no get_config(). Pass a "
              "config file, e.g. --config=configs/cifar100.py.")
    return (f"ERROR: config file {spec[0]!r} cannot be loaded: "
            f"{type(e).__name__}: {e}. Fix it, or pass one of the "
            "repository's configs/, e.g. --config=configs/digits.py.")
  return None


def config_shape_message(config, path: str) -> str | None:
  """Says why a config file that loads is not a whole config (not a
  ConfigDict, fields missing), or None if it is one."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import ml_collections
  from ban_jax import validation
  # pylint: enable=g-import-not-at-top,import-outside-toplevel
  if not isinstance(config, ml_collections.ConfigDict):
    return (f"ERROR: config file {path!r}: get_config() returned a "
            f"{type(config).__name__}, not an ml_collections.ConfigDict. "
            "Build it as configs/digits.py does: config = "
            "ml_collections.ConfigDict(), then set every field.")
  missing = validation.missing_fields(config)
  if missing:
    return (f"ERROR: config file {path!r} lacks "
            f"{validation.describe_missing(missing)}. Add them; "
            "configs/digits.py sets every field.")
  return None


def _without_traceback(message: str) -> str:
  """ml_collections puts the config file's traceback into its flag error."""
  lines = [line for line in message.splitlines() if line.strip()]
  if not any(line.startswith("Traceback") for line in lines):
    return message
  return f"{lines[0]}\n{lines[-1]}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a readable message for a misspelt config field."""
  missing = missing_config_message(argv)
  if missing:
    sys.exit(missing)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {_without_traceback(str(e))}\n"
             "Pass --help for usage.")
  except (AttributeError, KeyError) as e:  # ml_collections: unknown field.
    sys.exit(unknown_field_message(argv) or config_file_message(argv)
             or f"Bad config override: {e}")
  except Exception:  # pylint: disable=broad-except
    # The config file itself failed (a syntax error, an import, an error in
    # get_config); ml_collections passes that on with its traceback.
    message = config_file_message(argv)
    if message is None:
      raise
    sys.exit(message)


def _exit_now(message: str) -> None:
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


def main(argv):
  if len(argv) > 1:
    sys.exit(f"ERROR: unexpected arguments {' '.join(argv[1:])!r}: every "
             "setting is a flag, e.g. --config.num_epochs=2.")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  sys.unraisablehook = _unraisable
  # Imported here so that `--help` and flag errors come back at once.
  # pylint: disable=g-import-not-at-top
  from ban_jax import checkpoints
  from ban_jax import distributed
  from ban_jax import pipeline
  from ban_jax import preemption
  from ban_jax import validation
  from ban_jax.data import cifar
  from ban_jax.runtime import platforms
  from ban_jax.runtime import workdir_lock
  # pylint: enable=g-import-not-at-top
  shape = config_shape_message(
      _CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"]))
  if shape:
    sys.exit(shape)
  try:
    distributed.initialize()
    platforms.check_backend()  # The first thing to touch the devices.
  except (ValueError,  # A partial or malformed multi-process setting.
          platforms.BackendUnavailableError) as e:
    sys.exit(f"ERROR: {e}")
  preemption.install()
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except preemption.StopRequested as e:
    print(f"STOPPED: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  except (validation.ConfigError, FileNotFoundError, FloatingPointError,
          pickle.UnpicklingError, cifar.UnreadableDataError,
          workdir_lock.WorkdirLockedError) as e:
    # The message says what went wrong, where, and how to go on.
    sys.exit(f"ERROR: {e}")
  except checkpoints.CheckpointWriteError as e:
    _exit_now(f"ERROR: {e}")
  except OSError as e:  # A full disk, a quota, permissions, a network drive.
    sys.exit(f"ERROR: {e}. Finished generations and their checkpoints are "
             "kept: fix that, then rerun the same command to go on.")
  # Not "wrote": a rerun with the same results leaves the files untouched.
  logging.info("Results: %s/results.md, results.json and results.png.",
               _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
