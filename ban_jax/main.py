r"""Command-line entry point: flags, logging, distributed init, the chain.

  python -m ban_jax.main --config=configs/cifar100.py --workdir=runs/c100

Every config field can be overridden, e.g. `--config.num_generations=2`.
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py[:arguments]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and reports; rerunning with "
    "the same workdir continues where the last run stopped.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Drops Orbax's per-save INFO chatter; its warnings still show."""
  return record.levelno > std_logging.INFO or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # Imported here so that `--help` and flag errors come back at once.
  from ban_jax import distributed  # pylint: disable=g-import-not-at-top
  from ban_jax import pipeline  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  pipeline.run(_CONFIG.value, _WORKDIR.value)
  logging.info("Wrote %s/results.json and results.md.", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
