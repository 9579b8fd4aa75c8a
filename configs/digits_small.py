"""The digits chain on 200 training images: where a teacher still errs.

configs/digits.py's WRN-10-2 and BAN chain, trained on only the first 200
images of the digits train split (the split is shuffled and stratified, so
they hold 12-27 of each digit) and tested on the same 450 test images. On
the whole split every network fits the task and the born-again effect
cannot show; with 200 images the teacher errs several times as often, so
there is room for its students to differ from it. The recipe is not tuned
for a result: the batch is halved to 32 and the epochs raised to 50 so
that each generation takes about as many steps (300) as the full digits
job's (315), with the learning-rate decays at the same fractions of the
run.

  python -m ban_jax.main --config=configs/digits_small.py \
      --workdir=runs/digits_small --config.seeds='(0,1,2,3,4,5,6,7)'

README.md reports what it gives over 8 seeds.
"""

import os
import sys

import ml_collections

# ml_collections loads this file by its path: make its sibling configs
# importable from any working directory, not only the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import digits  # pylint: disable=g-import-not-at-top,wrong-import-position

TRAIN_EXAMPLES = 200


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
  if argument:
    raise ValueError(
        f"configs/digits_small.py takes no argument (got {argument!r}). "
        "Override fields instead, e.g. --config.num_epochs=2.")
  config = digits.get_config()
  config.data.max_train_examples = TRAIN_EXAMPLES
  # 6 steps an epoch at batch 32 (the last 8 images, a different 8 each
  # epoch, left out as in every config); 50 epochs, decays at 27 and 40.
  config.batch_size = 32
  config.num_epochs = 50
  config.optim.lr_decay_epochs = (27, 40)
  return config
