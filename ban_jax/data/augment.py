"""On-device preprocessing, run inside the jitted train step.

The Wide-ResNet recipe: a random crop of the 4-pixel reflect-padded image and
a horizontal flip with probability 1/2, drawn per example from the step's
RNG; then per-channel mean/std normalisation. Evaluation only normalises.

Both functions are pure functions of their inputs (and of the key), so the
same key always gives the same batch.

The crop is a `vmap` of `dynamic_slice`, which XLA lowers to one gather of
HxWxC windows: one read per output pixel. Two equivalent forms give
bit-identical outputs: an index gather straight from the unpadded image
with the reflection and the flip folded into the indices, and one-hot
matmuls. Neither has been shown faster on a GPU, so the plain form stays
until one is (docs/performance.md, "The input pipeline", has what was
measured). `python -m ban_jax.tools.bench_input` times the whole input path.
"""

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """uint8 (or float) pixels -> (x - mean) / std per channel.

  Args:
    images: (..., C) pixels in 0-255 units.
    mean: C channel means, in pixel units (`Dataset.mean`).
    std: C channel standard deviations, in pixel units (`Dataset.std`).
    dtype: output dtype; the arithmetic is float32 either way.

  Returns:
    The normalised images, same shape, in `dtype`.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def random_crop_flip(rng: jax.Array, images: jax.Array,
                     pad: int = 4) -> jax.Array:
  """Per-example random crop of the reflect-padded image + random h-flip.

  Args:
    rng: PRNG key; the crops and flips are a function of it alone.
    images: (B, H, W, C) batch, any dtype (uint8 from the device-resident
      dataset keeps the work in bytes).
    pad: reflect-padding on each side; crop offsets are uniform in
      [0, 2 * pad] along each axis, so a crop moves up to `pad` pixels.

  Returns:
    (B, H, W, C) crops in the input dtype; each is flipped left-right with
    probability 1/2.
  """
  batch, height, width, channels = images.shape
  if not 0 <= pad < min(height, width):
    # 'reflect' mirrors without repeating the edge, so it needs pad < size.
    raise ValueError(f"pad={pad} must be in [0, {min(height, width)}) for "
                     f"{height}x{width} images.")
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
