"""Random images and labels: a `Dataset` for tests and benchmarks.

Nothing to download or prepare, any size; the images are uint8 noise, so a
model learns nothing from them, but every step costs what it costs on real
data of the same shape.
"""

import numpy as np

from ban_jax.data import Dataset

# CIFAR-100's train-split channel stats: any values cost the same.
_MEAN = (129.3, 124.1, 112.4)
_STD = (68.2, 65.4, 70.4)


def load(num_examples: int, image_size: int, num_classes: int,
         num_test: int, seed: int = 0) -> Dataset:
  """Random uint8 RGB images and int32 labels, the same for the same seed.

  Args:
    num_examples: size of the train split.
    image_size: height and width of the images (32: CIFAR-shaped).
    num_classes: labels are drawn uniformly from [0, num_classes).
    num_test: size of the test split.
    seed: seeds numpy's generator.

  Returns:
    A `Dataset` named 'synthetic'.
  """
  rng = np.random.default_rng(seed)
  shape = (image_size, image_size, 3)
  return Dataset(
      name="synthetic",
      train_images=rng.integers(0, 256, (num_examples,) + shape, np.uint8),
      train_labels=rng.integers(0, num_classes, (num_examples,), np.int32),
      test_images=rng.integers(0, 256, (num_test,) + shape, np.uint8),
      test_labels=rng.integers(0, num_classes, (num_test,), np.int32),
      num_classes=num_classes, mean=_MEAN, std=_STD)
