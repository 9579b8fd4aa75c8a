"""data/__init__.py: `load_dataset` and `channel_stats`.

The CIFAR, digits, augmentation and synthetic data have their own test
files (test_cifar_*.py, test_digits.py, test_augment.py, test_synthetic.py);
the device-epoch and input-benchmark tests at the end are to move to theirs.
"""


import ml_collections
import numpy as np
import pytest

from ban_jax import config_schema
from ban_jax.data import channel_stats
from ban_jax.data import load_dataset


def _config(**kwargs):
  """configs/default.py's data block with `kwargs` (paths may be Paths)."""
  return ml_collections.ConfigDict(
      {**config_schema.defaults().data.to_dict(), **kwargs})


def test_channel_stats_are_exact():
  images = np.random.default_rng(0).integers(0, 256, (7, 5, 3, 2), np.uint8)
  mean, std = channel_stats(images)
  pixels = images.reshape(-1, 2).astype(np.float64)
  np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, pixels.std(0), rtol=1e-12)
  assert isinstance(mean, tuple) and isinstance(std[0], float)


def test_load_dataset_caps_digits_and_names_unknown_datasets():
  full = load_dataset(_config(name="digits"))
  capped = load_dataset(_config(name="digits", max_train_examples=100,
                                max_test_examples=30))
  for split, cap in (("train", 100), ("test", 30)):
    for part in ("images", "labels"):
      np.testing.assert_array_equal(getattr(capped, f"{split}_{part}"),
                                    getattr(full, f"{split}_{part}")[:cap])
  with pytest.raises(ValueError) as error:
    load_dataset(_config(name="mnist"))
  assert str(error.value) == (
      "Unknown dataset 'mnist'. Valid dataset names: digits, cifar10, "
      "cifar100.")
