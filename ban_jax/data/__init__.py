"""Datasets as host arrays, chosen by name from the config.

A source returns a `Dataset`: uint8 NHWC images and int32 labels for the
train and test splits, plus what the model and normalisation need. The
trainer puts those arrays on the devices once; batching, shuffling and
augmentation then happen on the device (see `ban_jax.data.augment`).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset in host memory; images are uint8 (N, H, W, C)."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  # Per-channel mean and std of the training images, in pixel units (0-255).
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...],
                                               tuple[float, ...]]:
  """Per-channel mean and std over a uint8 NHWC array, in pixel units."""
  # A 256-bin histogram per channel: exact for uint8, and 15x faster than
  # a float64 copy of CIFAR's 150M pixels.
  pixels = images.reshape(-1, images.shape[-1])
  values = np.arange(256, dtype=np.float64)
  means, stds = [], []
  for channel in range(pixels.shape[-1]):
    counts = np.bincount(pixels[:, channel], minlength=256)
    mean = counts @ values / counts.sum()
    means.append(float(mean))
    stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
  return tuple(means), tuple(stds)


DATASET_NAMES = ("digits", "cifar10", "cifar100")
# (height, width, channels) and classes of each dataset, so that models can
# be checked against it without loading it.
DATASET_SHAPES = {
    "digits": ((8, 8, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}
# Where CIFAR comes from (config.data.source); see data/cifar/.
DATA_SOURCES = ("auto", "tfds", "archive")


def load_dataset(data_config) -> Dataset:
  """Loads the dataset that `data_config.name` names (see configs/).

  `data_config.max_train_examples` / `max_test_examples` (0: all) keep only
  the first examples of a split: for smoke tests, and for the smaller
  train split of configs/digits_small.py; never for paper results. (CIFAR
  applies the train cap before dividing the split between hosts.)
  """
  name = data_config.name
  if name == "digits":
    from ban_jax.data import digits  # pylint: disable=g-import-not-at-top
    dataset = digits.load()
  elif name in ("cifar10", "cifar100"):
    from ban_jax.data import cifar  # pylint: disable=g-import-not-at-top
    dataset = cifar.load(name, data_config)
  else:
    raise ValueError(f"Unknown dataset {name!r}. Valid dataset names: "
                     f"{', '.join(DATASET_NAMES)}.")
  # cifar.load has capped the train split already, before sharding it.
  train_cap = (data_config.max_train_examples or None
               if name == "digits" else None)
  test_cap = data_config.max_test_examples or None
  if train_cap or test_cap:
    dataset = dataclasses.replace(
        dataset,
        train_images=dataset.train_images[:train_cap],
        train_labels=dataset.train_labels[:train_cap],
        test_images=dataset.test_images[:test_cap],
        test_labels=dataset.test_labels[:test_cap])
  return dataset
