r"""Command-line entry point: flags, logging, distributed init, the chain.

  python -m ban_jax.main --config=configs/cifar100.py --workdir=runs/c100

Every config field can be overridden, e.g. `--config.num_generations=2`.
Mistakes in the command (a misspelt field, an unknown model, missing data)
end the program with one message that says what is wrong and how to fix
it, and a non-zero exit status; nothing already on disk is touched.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ban_jax import config_file

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


def main(argv):
  if len(argv) > 1:
    sys.exit(f"ERROR: unexpected arguments {' '.join(argv[1:])!r}: every "
             "setting is a flag, e.g. --config.num_epochs=2.")
  # Imported here so that `--help` and flag errors come back at once.
  # pylint: disable=g-import-not-at-top
  from ban_jax import errors
  from ban_jax import pipeline
  from ban_jax.runtime import distributed
  from ban_jax.runtime import logs
  from ban_jax.runtime import platforms
  from ban_jax.runtime import preemption
  # pylint: enable=g-import-not-at-top
  logs.install()
  try:
    config_file.check_complete(
        _CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"]))
    distributed.initialize()
    platforms.check_backend()  # The first thing to touch the devices.
    preemption.install()
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except preemption.StopRequested as e:
    print(f"STOPPED: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  except errors.CheckpointWriteError as e:
    logs.exit_now(f"ERROR: {e}")
  except errors.UserError as e:
    # The message says what went wrong, where, and how to go on.
    sys.exit(f"ERROR: {e}")
  except OSError as e:  # A full disk, a quota, permissions, a network drive.
    sys.exit(f"ERROR: {e}. Finished generations and their checkpoints are "
             "kept: fix that, then rerun the same command to go on.")
  # Not "wrote": a rerun with the same results leaves the files untouched.
  logging.info("Results: %s/results.md, results.json and results.png.",
               _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=config_file.parse_flags)
