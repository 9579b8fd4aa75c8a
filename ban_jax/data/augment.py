"""On-device preprocessing, run inside the jitted train step.

The Wide-ResNet recipe: a random crop of the 4-pixel reflect-padded image and
a horizontal flip with probability 1/2, drawn per example from the step's
RNG; then per-channel mean/std normalisation. Evaluation only normalises.
"""

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """uint8 (or float) pixels -> (x - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def random_crop_flip(rng: jax.Array, images: jax.Array,
                     pad: int = 4) -> jax.Array:
  """Per-example random crop of the reflect-padded image + random h-flip."""
  batch, height, width, channels = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                   mode="reflect")
  offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_rng, 0.5, (batch,))
  return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1], cropped)
