r"""Born-again networks on CIFAR-10: the paper's Table 1.

Settings: configs/cifar_base.py (the Wide-ResNet recipe, 200 epochs, three
born-again generations). Data: TFDS `cifar10` or the official
cifar-10-python.tar.gz (README, "CIFAR data"). Each command runs one row;
the paper's test error (%), teacher -> BAN, is in brackets:

  --config=configs/cifar10.py:model=wrn28_1           [6.69 -> 6.64]
  --config=configs/cifar10.py:model=wrn28_2           [5.06 -> 4.86]
  --config=configs/cifar10.py:model=wrn28_5           [4.13 -> 4.03]
  --config=configs/cifar10.py:model=wrn28_10          [3.77 -> 3.86]
  --config=configs/cifar10.py:model=densenet112_33    [3.84 -> 3.61]
  --config=configs/cifar10.py:model=densenet90_60     [3.81 -> 3.5]
  --config=configs/cifar10.py:model=densenet80_80     [3.48 -> 3.49]
  --config=configs/cifar10.py:model=densenet80_120    [3.37 -> 3.54]

Each is run as
  python -m ban_jax.main --config=configs/cifar10.py:ARGS --workdir=runs/NAME
and `configs/cifar10.py:smoke` runs the whole chain on CPU in about a
minute. Argument syntax: configs/cifar_base.py.
"""

import os
import sys

# ml_collections loads this file by its path: make its sibling configs
# importable from any working directory, not only the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar_base  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(argument: str | None = None):
  return cifar_base.cifar_config("cifar10", argument)
