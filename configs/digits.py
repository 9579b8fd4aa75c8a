"""Born-again chain on scikit-learn's digits: the built-in, offline job.

A WRN-10-2 teacher and three born-again generations (BAN, T = 1) on the 8x8
digits, with the fixed stratified split of `ban_jax/data/digits.py`. Runs on
a laptop CPU in about a minute:

  python -m ban_jax.main --config=configs/digits.py --workdir=runs/digits

Override any field from the command line, e.g. `--config.num_generations=2`
or `--config.distill.loss=kd+label`; every field, with its meaning, is in
configs/default.py, which this config changes only where digits differ.
"""

import os
import sys

import ml_collections

# ml_collections loads this file by its path: make its sibling configs
# importable from any working directory, not only the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
  if argument:
    raise ValueError(
        f"configs/digits.py takes no argument (got {argument!r}): it is "
        "already a small job. Override fields instead, e.g. "
        "--config.num_epochs=2.")
  # Every field and the rest of the recipe (SGD with Nesterov momentum 0.9,
  # weight decay 5e-4, x0.2 decays, BAN at T = 1, three generations).
  config = default.get_config()

  config.data.name = "digits"
  # 8x8 digits: no random crop or flip.
  config.data.augment = False

  # A small Wide-ResNet without dropout: it trains in seconds per epoch.
  config.model.name = "wrn10_2"
  config.model.dropout_rate = 0.0

  # 15 epochs of 21 steps, decayed at 8 and 12.
  config.optim.learning_rate = 0.05
  config.optim.lr_decay_epochs = (8, 12)
  config.num_epochs = 15
  config.batch_size = 64
  config.eval_batch_size = 128
  # On a CPU, several steps per call are unrolled: slower to compile.
  config.steps_per_call = 1
  return config
