"""data/augment.py: the on-device random crop, flip and normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.data import augment

# Each program runs once: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

# Jitted: run eagerly, every operation would be compiled on its own.
_crop_flip = jax.jit(augment.random_crop_flip, static_argnames="pad")
_normalize = jax.jit(augment.normalize, static_argnums=(1, 2, 3))


def _coordinate_images(n):
  """Pixel (r, c) of image b is (r, c, b % 256): values name positions."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[..., 0] = rows
  images[..., 1] = cols
  images[..., 2] = (np.arange(n) % 256)[:, None, None]
  return images


def _find_crops(images, out, pad=4):
  """For each output, every (dy, dx, flipped) it equals, by brute force."""
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode="reflect")
  windows = np.lib.stride_tricks.sliding_window_view(
      padded, images.shape[1:3], axis=(1, 2))  # (B, 9, 9, C, 32, 32)
  windows = np.moveaxis(windows, 3, -1)  # (B, 9, 9, 32, 32, C)
  matches = []
  for start in range(0, len(out), 250):
    w = windows[start:start + 250]
    o = out[start:start + 250, None, None]
    plain = (w == o).all(axis=(3, 4, 5))
    flipped = (w[:, :, :, :, ::-1] == o).all(axis=(3, 4, 5))
    matches.append(np.stack([plain, flipped], -1))  # (b, 9, 9, 2)
  return np.concatenate(matches)


def test_crops_stay_inside_padded_image_and_flip_half_the_time():
  n = 2000
  images = _coordinate_images(n)
  out = np.asarray(_crop_flip(jax.random.key(0), jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == np.uint8
  matches = _find_crops(images, out)
  # Each output is exactly one window of its own padded image at one
  # offset in [0, 8]^2, possibly flipped.
  np.testing.assert_array_equal(matches.sum(axis=(1, 2, 3)), 1)
  which = np.argwhere(matches)  # (n, 4): b, dy, dx, flipped
  np.testing.assert_array_equal(which[:, 0], np.arange(n))
  # Every one of the 81 offsets occurs (about 25 times each).
  offsets = set(map(tuple, which[:, 1:3]))
  assert offsets == {(dy, dx) for dy in range(9) for dx in range(9)}
  # ... uniformly: each of the 9 shifts along an axis about 2000 / 9 = 222
  # times (binomial sd 14), none twice as often as the others.
  for axis in (1, 2):
    counts = np.bincount(which[:, axis], minlength=9)
    assert counts.min() >= 160 and counts.max() <= 290, counts
  flip_fraction = which[:, 3].mean()
  assert 0.45 <= flip_fraction <= 0.55, flip_fraction


def test_crop_flip_is_a_function_of_the_key():
  images = jnp.asarray(_coordinate_images(64))
  # Traced twice, by two jits: randomness drawn in Python would differ
  # between the traces, the key's does not.
  a, b = (jax.jit(lambda key, x: augment.random_crop_flip(key, x))(
      jax.random.key(1), images) for _ in range(2))
  c = _crop_flip(jax.random.key(2), images)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_crop_flip_without_padding_only_flips():
  images = _coordinate_images(16)
  out = np.asarray(_crop_flip(jax.random.key(3), jnp.asarray(images), pad=0))
  same = (out == images).all(axis=(1, 2, 3))
  flipped = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
  assert (same ^ flipped).all()
  with pytest.raises(ValueError, match="pad=32"):
    augment.random_crop_flip(jax.random.key(0), jnp.asarray(images), pad=32)


def test_crop_padding_must_be_below_each_side():
  # 'reflect' mirrors without repeating the edge: pad = side - 1 is the
  # most it can do, and every output is still one window of that image.
  images = _coordinate_images(64)[:, :4, :6]  # 4x6
  out = np.asarray(_crop_flip(jax.random.key(4), jnp.asarray(images), pad=3))
  # (On so small an image, several windows can be equal.)
  assert _find_crops(images, out, pad=3).any(axis=(1, 2, 3)).all()
  for pad, shape, message in [
      (-1, (32, 32), "pad=-1 must be in [0, 32) for 32x32 images."),
      (4, (4, 6), "pad=4 must be in [0, 4) for 4x6 images."),
      (4, (6, 4), "pad=4 must be in [0, 4) for 6x4 images.")]:
    with pytest.raises(ValueError) as error:
      augment.random_crop_flip(jax.random.key(0),
                               jnp.zeros((2,) + shape + (3,), jnp.uint8), pad)
    assert str(error.value) == message


def test_normalize_hand_values():
  pixels = jnp.array([[[[12, 20, 40], [10, 24, 25]]]], jnp.uint8)  # (1,1,2,3)
  out = _normalize(pixels, mean=(10.0, 20.0, 30.0), std=(2, 4, 5))
  np.testing.assert_allclose(out, [[[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]]])
  assert out.dtype == jnp.float32
  half = _normalize(jnp.array([[0, 255, 51]], jnp.uint8), 127.5, 127.5,
                    dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), [[-1.0, 1.0, -0.6]],
                             atol=4e-3)
  # The arithmetic is float32 and only the result is rounded to bfloat16:
  # (200 - 125.3) / 1.7 = 43.94 -> 44.0 and (77 - 125.3) / 1.7 = -28.41 ->
  # -28.375, where bfloat16 arithmetic (mean 125.5, std 1.703125) would
  # give 43.75 and -28.5.
  half = _normalize(jnp.array([200, 77], jnp.uint8), 125.3, 1.7,
                    dtype=jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(half, np.float32), [44.0, -28.375])


def test_evaluation_path_is_untouched():
  # Evaluation only normalises: no key, no crop, no flip, the same every
  # call, and the pixels keep their places.
  images = jnp.asarray(_coordinate_images(8))
  a = jax.jit(lambda x: augment.normalize(x, (0, 0, 0), (1, 1, 1)))(images)
  np.testing.assert_array_equal(a, np.asarray(images, np.float32))
