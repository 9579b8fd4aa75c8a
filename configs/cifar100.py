r"""Born-again networks on CIFAR-100: the paper's Tables 2, 3 and 5.

Settings: configs/cifar_base.py (the Wide-ResNet recipe, 200 epochs, three
born-again generations). Data: TFDS `cifar100` or the official
cifar-100-python.tar.gz (README, "CIFAR data"). Each command below runs one
row; the paper's test error (%) it should reach is in brackets. Single runs
spread by about 0.66 points (BAN vs BAN-1 in Table 2): use several seeds.

Table 2, DenseNet teachers (Teacher -> BAN; BAN+L; CWTM; DKPP):
  --config=configs/cifar100.py:model=densenet112_33            [18.25 -> 16.95]
  --config=configs/cifar100.py:model=densenet112_33,loss=kd+label     [17.68]
  --config=configs/cifar100.py:model=densenet112_33,loss=cwtm         [17.84]
  --config=configs/cifar100.py:model=densenet112_33,loss=dkpp         [17.84]
  --config=configs/cifar100.py:model=densenet90_60             [17.69 -> 16.69]
  --config=configs/cifar100.py:model=densenet90_60,loss=kd+label      [16.93]
  --config=configs/cifar100.py:model=densenet90_60,loss=cwtm          [17.42]
  --config=configs/cifar100.py:model=densenet90_60,loss=dkpp          [17.43]
  --config=configs/cifar100.py:model=densenet80_80             [17.16 -> 16.36]
  --config=configs/cifar100.py:model=densenet80_80,loss=kd+label      [16.5]
  --config=configs/cifar100.py:model=densenet80_80,loss=cwtm          [17.16]
  --config=configs/cifar100.py:model=densenet80_80,loss=dkpp          [16.84]
  --config=configs/cifar100.py:model=densenet80_120            [16.87 -> 16.00]
  --config=configs/cifar100.py:model=densenet80_120,loss=kd+label     [16.41]
  --config=configs/cifar100.py:model=densenet80_120,loss=cwtm         [17.12]
  --config=configs/cifar100.py:model=densenet80_120,loss=dkpp         [16.34]
  BAN-1..3 and Ens*2/Ens*3 come from the same BAN runs (112-33: 17.61,
  17.22, 16.59 / 15.77, 15.68; 90-60: 16.62, 16.44, 16.72 / 15.39, 15.74;
  80-80: 16.26, 16.30, 15.5 / 15.46, 15.14; 80-120: 16.13, 16.13 / 15.13).

Table 3, Wide-ResNet teachers (Teacher -> WRN BAN / -> DenseNet-90-60):
  --config=configs/cifar100.py:model=wrn28_1                   [30.05 -> 29.43]
  --config=configs/cifar100.py:model=wrn28_1,student=densenet90_60    [24.93]
  --config=configs/cifar100.py:model=wrn28_2                   [25.32 -> 24.38]
  --config=configs/cifar100.py:model=wrn28_2,student=densenet90_60    [18.49]
  --config=configs/cifar100.py:model=wrn28_5                   [20.88 -> 20.93]
  --config=configs/cifar100.py:model=wrn28_5,student=densenet90_60    [17.52]
  --config=configs/cifar100.py:model=wrn28_10                  [19.08 -> 18.25]
  --config=configs/cifar100.py:model=wrn28_10,student=densenet90_60   [16.79]

Table 5, DenseNet-90-60 teacher -> residual students sharing its stem and
classifier (frozen), Baseline -> BAN (see ban_jax/models/resnet.py for our
reading of the students' names). `share` also trains the Baseline, the
student from labels alone with the teacher's stem and classifier frozen, in
the same run (seed_<s>/baseline/; results.md's Baseline column):
  --config=configs/cifar100.py:model=densenet90_60,student=densepreresnet14_0.5,share  [20.28 -> 18.8]
  --config=configs/cifar100.py:model=densenet90_60,student=densepreresnet14_1,share    [18.84 -> 17.39]
  --config=configs/cifar100.py:model=densenet90_60,student=densewrn1_1,share           [20.4 -> 19.12]
  --config=configs/cifar100.py:model=densenet90_60,student=densewrn4_0.5,share         [19.63 -> 17.13]
  --config=configs/cifar100.py:model=densenet90_60,student=densewrn2_1,share           [18.83 -> 17.42]
  --config=configs/cifar100.py:model=densenet90_60,student=densewrn4_1,share           [18.77 -> 17.18]

Each is run as
  python -m ban_jax.main --config=configs/cifar100.py:ARGS --workdir=runs/NAME
and `configs/cifar100.py:smoke` runs the whole chain on CPU in about a
minute (tiny model, a few hundred images, 1 epoch).
"""

import os
import sys

# ml_collections loads this file by its path: make its sibling configs
# importable from any working directory, not only the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar_base  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(argument: str | None = None):
  return cifar_base.cifar_config("cifar100", argument)
