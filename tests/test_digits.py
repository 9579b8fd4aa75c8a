"""data/digits.py: the digits split and scaling, the same everywhere."""

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
from sklearn import model_selection

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


def _sklearn_split(images, labels):
  return model_selection.train_test_split(
      images, labels, test_size=digits.TEST_FRACTION, stratify=labels,
      random_state=digits.SPLIT_SEED)


def _assert_same(dataset, arrays):
  """`dataset`'s split is `arrays` (train_test_split's order), exactly."""
  got = (dataset.train_images, dataset.test_images, dataset.train_labels,
         dataset.test_labels)
  for have, want in zip(got, arrays, strict=True):
    assert have.dtype == want.dtype
    np.testing.assert_array_equal(have, want)


def _sklearn_digits():
  raw = sk_datasets.load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return _sklearn_split(images, raw.target.astype(np.int32))


def test_the_digits_are_sklearns_load_digits_and_train_test_split():
  _assert_same(digits.load(), _sklearn_digits())


def test_without_the_file_sklearn_loads_the_same_digits(monkeypatch,
                                                        tmp_path):
  monkeypatch.setattr(digits, "sklearn_digits_file",
                      lambda: tmp_path / "digits.csv.gz")
  _assert_same(digits.load(), _sklearn_digits())


@pytest.mark.parametrize("class_counts,fraction,seed", [
    # Equal shares: 3.5 of each class for training, so the rng picks which
    # two classes give a fourth; and likewise for the test draw.
    ((5, 5, 5, 5), 0.3, 0),
    ((5, 5, 5, 5), 0.3, 42),
    ((2, 3, 2), 0.5, 1),
    ((73, 74, 76, 81, 84, 61, 74), 0.1, 3),
])
def test_stratified_split_is_train_test_splits(class_counts, fraction, seed):
  labels = np.random.default_rng(seed).permutation(
      np.arange(len(class_counts)).repeat(class_counts))
  train, test = digits.stratified_split(labels, fraction, seed)
  want_train, want_test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=fraction, stratify=labels,
      random_state=seed)
  np.testing.assert_array_equal(train, want_train)
  np.testing.assert_array_equal(test, want_test)
