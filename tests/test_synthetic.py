"""data/synthetic.py: random datasets for tests and benchmarks."""

import numpy as np

from ban_jax.data import synthetic


def test_synthetic_dataset_shapes_and_ranges():
  data = synthetic.load(num_examples=200, image_size=8, num_classes=3,
                        num_test=5)
  assert data.train_images.shape == (200, 8, 8, 3)
  assert data.test_images.shape == (5, 8, 8, 3)
  assert data.train_images.dtype == np.uint8
  assert (data.train_images.min(), data.train_images.max()) == (0, 255)
  assert data.train_labels.dtype == np.int32
  assert set(np.unique(data.train_labels)) == {0, 1, 2}
  assert data.test_labels.shape == (5,)
  assert data.num_classes == 3
  assert data.image_shape == (8, 8, 3)


def test_synthetic_dataset_is_a_function_of_the_seed():
  a, b = (synthetic.load(16, 4, 10, num_test=4) for _ in range(2))
  c = synthetic.load(16, 4, 10, num_test=4, seed=1)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert (a.train_images != c.train_images).any()
