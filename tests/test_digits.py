"""data/digits.py: the digits split and scaling, the same everywhere."""

import numpy as np
from sklearn import datasets as sk_datasets

from ban_jax.data import channel_stats
from ban_jax.data import digits


def test_digits_split_is_fixed_stratified_and_rescaled():
  ds = digits.load()
  assert (ds.name, ds.num_classes, ds.image_shape) == ("digits", 10, (8, 8, 1))
  assert ds.train_images.shape == (1347, 8, 8, 1)
  assert ds.test_images.shape == (450, 8, 8, 1)
  assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  # Stratified: each class's test share is its 25% rounded (the classes
  # have 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 images).
  np.testing.assert_array_equal(np.bincount(ds.test_labels),
                                [45, 46, 44, 46, 45, 46, 45, 45, 43, 45])
  np.testing.assert_array_equal(np.bincount(ds.train_labels),
                                [133, 136, 133, 137, 136, 136, 136, 134, 131,
                                 135])
  # The split of random_state=0, the same everywhere: its first labels, and
  # its first test images are sklearn's digits 1364, 1579 and 1023.
  assert ds.train_labels[:8].tolist() == [7, 3, 6, 6, 7, 6, 7, 9]
  assert ds.test_labels[:8].tolist() == [2, 0, 4, 9, 4, 1, 2, 4]
  # Levels 0..16 -> round(level * 255 / 16), half to even (127.5 -> 128).
  levels = np.array([0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191,
                     207, 223, 239, 255], np.uint8)
  raw = sk_datasets.load_digits()
  np.testing.assert_array_equal(
      ds.test_images[:3, ..., 0],
      levels[raw.images[[1364, 1579, 1023]].astype(int)])
  np.testing.assert_array_equal(
      np.unique(np.concatenate([ds.train_images, ds.test_images])), levels)
  # Normalised with the training split's statistics only.
  assert ds.mean == channel_stats(ds.train_images)[0]
  assert ds.std == channel_stats(ds.train_images)[1]
  np.testing.assert_allclose(ds.mean, [ds.train_images.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [ds.train_images.std()], rtol=1e-12)
  assert ds.mean != channel_stats(ds.test_images)[0]
