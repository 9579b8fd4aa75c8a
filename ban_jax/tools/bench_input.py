"""Images/second of the on-device input pipeline alone.

Times what the train step does to produce a batch, without the model: take
the step's indices from the epoch's device-side permutation, gather those
images from a device-resident 50000x32x32x3 uint8 training set, random crop
+ flip, normalise. One JSON line per batch size:

  python -m ban_jax.tools.bench_input [--steps=50] [--batch_sizes=128,512]

  {"impl": "ban_jax", "model": "input", "mode": "augment", "batch": 128,
   "img_per_s": ...}

Compare with the train step's images/second to see what share of a step the
input costs. The data are random bytes: the work does not depend on them.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.data import augment
from ban_jax.data import device_epoch

# Channel stats of CIFAR-10's train split; any values cost the same.
_MEAN = (125.3, 123.0, 113.9)
_STD = (63.0, 62.1, 66.7)


def make_step(batch_size: int):
  """The per-step input work, jitted: indices -> augmented float batch."""

  @jax.jit
  def step(images, perm, key, step_in_epoch):
    idx = device_epoch.batch_indices(perm, step_in_epoch, batch_size)
    batch = augment.random_crop_flip(jax.random.fold_in(key, step_in_epoch),
                                     images[idx])
    return augment.normalize(batch, _MEAN, _STD)

  return step


def bench(images: jax.Array, batch_size: int, steps: int,
          warmup: int = 3, seed: int = 0) -> float:
  """Images/second over `steps` timed steps, after `warmup` untimed ones."""
  key = jax.random.key(seed)
  perm = jax.jit(device_epoch.epoch_permutation, static_argnums=1)(
      key, images.shape[0])
  num_steps = device_epoch.steps_per_epoch(images.shape[0], batch_size)
  step = make_step(batch_size)
  out = None
  for s in range(warmup):
    out = step(images, perm, key, s % num_steps)
  if out is not None:
    out.block_until_ready()
  start = time.perf_counter()
  for s in range(steps):
    out = step(images, perm, key, s % num_steps)
  out.block_until_ready()
  return batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=50,
                      help="timed steps per batch size")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps first (the first one compiles)")
  parser.add_argument("--batch_sizes", default="128,512",
                      help="comma-separated batch sizes")
  parser.add_argument("--num_examples", type=int, default=50_000,
                      help="size of the device-resident training set")
  args = parser.parse_args(argv)
  try:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  except ValueError:
    batch_sizes = []
  if not all(1 <= b <= args.num_examples for b in batch_sizes) or (
      not batch_sizes):
    parser.error(f"--batch_sizes={args.batch_sizes!r}: use integers in [1, "
                 f"--num_examples={args.num_examples}], e.g. 128,512.")
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be at least 1 and --warmup at least 0.")

  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(
      0, 256, (args.num_examples, 32, 32, 3), dtype=np.uint8))
  for batch_size in batch_sizes:
    img_per_s = bench(images, batch_size, args.steps, args.warmup)
    print(json.dumps({"impl": "ban_jax", "model": "input", "mode": "augment",
                      "batch": batch_size,
                      "img_per_s": round(img_per_s, 1)}), flush=True)


if __name__ == "__main__":
  main()
