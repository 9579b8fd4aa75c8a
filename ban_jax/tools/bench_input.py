"""Images/second of the train step's input alone, without the model.

Times what the train step does to produce a batch, with the functions it
runs (`train.batch_indices` and `train.input_batch`): take the step's
indices from the epoch's device-side permutation, gather those images and
labels from a device-resident 50000x32x32x3 uint8 training set placed as
training places it (`parallel.put_train_split`) on every device, random
crop + flip, normalise. One JSON line per batch size:

  python -m ban_jax.tools.bench_input [--steps=50] [--batch_sizes=128,512]

  {"impl": "ban_jax", "model": "input", "mode": "augment", "batch": 128,
   "img_per_s": ...}

Compare with the train step's images/second to see what share of a step the
input costs. The data are random bytes: the work does not depend on them.
Each step is one compiled call here; in training it is part of the train
step's program.
"""

import argparse
import json
import time

import jax
import numpy as np
from jax.sharding import Mesh

from ban_jax import train
from ban_jax.runtime import parallel

# Channel stats of CIFAR-10's train split; any values cost the same.
MEAN = (125.3, 123.0, 113.9)
STD = (63.0, 62.1, 66.7)
# The configs' crop padding: 4 pixels, the Wide-ResNet recipe.
CROP_PADDING = 4


def make_step(batch_size: int, mesh: Mesh):
  """The per-step input work, jitted: step number -> augmented batch.

  Signature: (train_images, train_labels, perm, key, step_in_epoch) ->
  (float32 images, labels), the step's key folded from `key` and the step
  as the train step folds it.
  """

  @jax.jit
  def step(images, labels, perm, key, step_in_epoch):
    idx = train.batch_indices(perm, step_in_epoch, batch_size)
    images, labels, _ = train.input_batch(
        images, labels, idx, jax.random.fold_in(key, step_in_epoch), mesh,
        crop_flip=True, crop_padding=CROP_PADDING, mean=MEAN, std=STD)
    return images, labels

  return step


def bench(images: jax.Array, labels: jax.Array, batch_size: int, steps: int,
          mesh: Mesh, warmup: int = 3, seed: int = 0) -> float:
  """Images/second over `steps` timed steps, after `warmup` untimed ones."""
  key = jax.random.key(seed)
  perm = train.epoch_permutation(key, images.shape[0])
  num_steps = images.shape[0] // batch_size
  step = make_step(batch_size, mesh)
  out = None
  for s in range(warmup):
    out = step(images, labels, perm, key, s % num_steps)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for s in range(steps):
    out = step(images, labels, perm, key, s % num_steps)
  jax.block_until_ready(out)
  return batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=50,
                      help="timed steps per batch size")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps first (the first one compiles)")
  parser.add_argument("--batch_sizes", default="128,512",
                      help="comma-separated global batch sizes")
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
  mesh = parallel.make_mesh()
  devices = mesh.devices.size
  for batch_size in batch_sizes:
    # The batch is split over every device, as in training.
    if batch_size % devices:
      parser.error(f"--batch_sizes={args.batch_sizes!r}: batch_size="
                   f"{batch_size} is not divisible by the {devices} devices; "
                   f"use a multiple of {devices}.")

  rng = np.random.default_rng(0)
  images, labels = parallel.put_train_split(
      (rng.integers(0, 256, (args.num_examples, 32, 32, 3), dtype=np.uint8),
       rng.integers(0, 10, (args.num_examples,), dtype=np.int32)), mesh)
  for batch_size in batch_sizes:
    img_per_s = bench(images, labels, batch_size, args.steps, mesh,
                      args.warmup)
    print(json.dumps({"impl": "ban_jax", "model": "input", "mode": "augment",
                      "batch": batch_size,
                      "img_per_s": round(img_per_s, 1)}), flush=True)


if __name__ == "__main__":
  main()
