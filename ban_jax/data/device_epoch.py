"""Epochs over a device-resident training set, without the host.

The training images live on the device(s) for the whole run. Each epoch is a
permutation of the example indices drawn on the device from the epoch's key;
step `s` of the epoch takes the `s`-th consecutive block of `batch_size`
indices from it, and the last `num_examples % batch_size` indices of the
permutation are dropped (they differ from epoch to epoch). Both helpers are
pure and jit-able, so the train step can do

    perm = epoch_permutation(jax.random.fold_in(key, epoch), n)
    idx = batch_indices(perm, step_in_epoch, batch_size)
    images = augment.random_crop_flip(rng, train_images[idx])

and no image crosses from host to device during an epoch.
"""

import jax
import jax.numpy as jnp


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches in one epoch (the remainder is dropped)."""
  if batch_size <= 0 or num_examples < batch_size:
    raise ValueError(f"batch_size={batch_size} must be in [1, "
                     f"num_examples={num_examples}].")
  return num_examples // batch_size


def epoch_permutation(key: jax.Array, num_examples: int) -> jax.Array:
  """A uniformly random order of `range(num_examples)`, as int32."""
  return jax.random.permutation(key, num_examples).astype(jnp.int32)


def batch_indices(perm: jax.Array, step_in_epoch, batch_size: int):
  """The indices of step `step_in_epoch` of the epoch `perm` orders.

  Args:
    perm: (N,) permutation from `epoch_permutation`.
    step_in_epoch: int or traced int scalar in
      [0, steps_per_epoch(N, batch_size)).
    batch_size: static batch size.

  Returns:
    (batch_size,) int32 indices `perm[s * batch_size:(s + 1) * batch_size]`.
    A step past the last full batch is not an error under jit:
    `dynamic_slice` clamps it onto the last `batch_size` indices.
  """
  start = jnp.asarray(step_in_epoch, jnp.int32) * batch_size
  return jax.lax.dynamic_slice(perm, (start,), (batch_size,))
