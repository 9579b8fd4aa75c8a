"""scikit-learn's handwritten digits: the built-in, offline dataset.

1,797 8x8 grey images of the digits 0-9, shipped inside scikit-learn, so the
whole pipeline runs with no download. The split is fixed: a stratified 75/25
split with `random_state=0` (1,347 train, 450 test images), the same on
every machine and every run. Pixel values 0..16 are rescaled to 0..255 uint8
so that every dataset enters the model the same way.
"""

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from ban_jax.data import Dataset, channel_stats

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load() -> Dataset:
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, labels, test_size=TEST_FRACTION, stratify=labels,
      random_state=SPLIT_SEED)
  mean, std = channel_stats(train_x)
  return Dataset(
      name="digits",
      train_images=train_x, train_labels=train_y,
      test_images=test_x, test_labels=test_y,
      num_classes=10, mean=mean, std=std)
