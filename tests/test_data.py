"""data/__init__.py: `load_dataset` and `channel_stats`.

The CIFAR, digits, augmentation and synthetic data have their own test
files (test_cifar_*.py, test_digits.py, test_augment.py, test_synthetic.py);
the device-epoch and input-benchmark tests at the end are to move to theirs.
"""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ban_jax import config_schema
from ban_jax.data import channel_stats
from ban_jax.data import device_epoch
from ban_jax.data import load_dataset
from ban_jax.tools import bench_input
from ban_jax.tools.bench_input import main as bench_input_main


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


# ---------------------------------------------------------------------------
# Device-resident epochs.
# ---------------------------------------------------------------------------


def test_epoch_visits_every_example_once():
  n, batch = 96, 16
  steps = device_epoch.steps_per_epoch(n, batch)
  assert steps == 6
  perm = jax.jit(device_epoch.epoch_permutation, static_argnums=1)(
      jax.random.key(0), n)
  take = jax.jit(device_epoch.batch_indices, static_argnums=2)
  seen = np.concatenate([np.asarray(take(perm, s, batch))
                         for s in range(steps)])
  assert seen.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(seen, minlength=n), np.ones(n))
  # The order is shuffled, and another epoch's key gives another order.
  assert (seen != np.arange(n)).any()
  other = device_epoch.epoch_permutation(jax.random.key(1), n)
  assert (np.asarray(other) != np.asarray(perm)).any()
  np.testing.assert_array_equal(np.sort(np.asarray(other)), np.arange(n))


def test_epoch_with_remainder_has_no_repeats():
  n, batch = 100, 16
  perm = device_epoch.epoch_permutation(jax.random.key(5), n)
  seen = np.concatenate([
      np.asarray(device_epoch.batch_indices(perm, s, batch))
      for s in range(device_epoch.steps_per_epoch(n, batch))])
  assert len(seen) == 96 and len(set(seen.tolist())) == 96
  np.testing.assert_array_equal(seen, np.asarray(perm)[:96])


@pytest.mark.parametrize("num_examples, batch_size, steps", [
    (16, 16, 1), (31, 16, 1), (32, 16, 2),
    (50000, 128, 390),  # CIFAR: 80 images an epoch are left out.
    (1347, 64, 21)])    # Digits.
def test_steps_per_epoch_drops_the_remainder(num_examples, batch_size, steps):
  assert device_epoch.steps_per_epoch(num_examples, batch_size) == steps


@pytest.mark.parametrize("num_examples, batch_size, message", [
    (8, 16, "batch_size=16 must be in [1, num_examples=8]."),
    (10, 0, "batch_size=0 must be in [1, num_examples=10]."),
    (10, -2, "batch_size=-2 must be in [1, num_examples=10]."),
])
def test_steps_per_epoch_refuses_bad_batch_sizes(num_examples, batch_size,
                                                 message):
  with pytest.raises(ValueError) as error:
    device_epoch.steps_per_epoch(num_examples, batch_size)
  assert str(error.value) == message


def test_epoch_permutation_is_int32_even_with_x64():
  with jax.enable_x64(True):
    perm = device_epoch.epoch_permutation(jax.random.key(0), 10)
  assert perm.dtype == jnp.int32
  np.testing.assert_array_equal(np.sort(np.asarray(perm)), np.arange(10))


# ---------------------------------------------------------------------------
# Input benchmark.
# ---------------------------------------------------------------------------


def test_bench_input_prints_one_json_line_per_batch(capsys):
  bench_input_main(["--steps=2", "--warmup=1", "--batch_sizes=8,16",
                    "--num_examples=64"])
  lines = capsys.readouterr().out.strip().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["batch"] for r in records] == [8, 16]
  for r in records:
    assert set(r) == {"impl", "model", "mode", "batch", "img_per_s"}
    assert (r["impl"], r["model"], r["mode"]) == ("ban_jax", "input",
                                                  "augment")
    assert r["img_per_s"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--batch_sizes=0"], "--batch_sizes='0': use integers in [1, "
     "--num_examples=50000]"),
    (["--batch_sizes=128", "--num_examples=64"], "--num_examples=64]"),
    (["--steps=0"], "--steps must be at least 1"),
    (["--warmup=-1"], "--warmup at least 0"),
    (["--batch_sizes="], "--batch_sizes='': use integers in [1, "),
    (["--batch_sizes=8,big"], "--batch_sizes='8,big': use integers in [1, "),
])
def test_bench_input_refuses_bad_flags_before_any_compute(capsys, flags,
                                                          message):
  with pytest.raises(SystemExit) as stop:
    bench_input_main(flags)
  assert stop.value.code == 2
  assert message in capsys.readouterr().err


def test_bench_input_main_passes_its_flags_and_rounds(monkeypatch, capsys):
  calls = []

  def fake_bench(images, batch_size, steps, warmup):
    calls.append((images.shape, images.dtype, batch_size, steps, warmup))
    return 1234.5678 * batch_size

  monkeypatch.setattr(bench_input, "bench", fake_bench)
  bench_input_main(["--steps=7", "--warmup=2", "--batch_sizes=8,16",
                    "--num_examples=64"])
  assert calls == [((64, 32, 32, 3), jnp.uint8, batch, 7, 2)
                   for batch in (8, 16)]
  assert capsys.readouterr().out.splitlines() == [
      '{"impl": "ban_jax", "model": "input", "mode": "augment", "batch": 8, '
      '"img_per_s": 9876.5}',
      '{"impl": "ban_jax", "model": "input", "mode": "augment", "batch": 16, '
      '"img_per_s": 19753.1}']


def test_bench_input_times_whole_steps_after_the_warmup(monkeypatch):
  events, clock = [], [10.0]

  class Out:

    def block_until_ready(self):
      events.append("block")

  def fake_make_step(batch_size):
    def step(images, perm, key, step_in_epoch):
      del images, perm, key
      events.append(step_in_epoch)
      clock[0] += 0.25
      return Out()
    events.append(f"make {batch_size}")
    return step

  def perf_counter():
    events.append("clock")
    return clock[0]

  monkeypatch.setattr(bench_input, "make_step", fake_make_step)
  monkeypatch.setattr(bench_input, "time",
                      types.SimpleNamespace(perf_counter=perf_counter))
  images = jnp.zeros((10, 2, 2, 3), jnp.uint8)
  img_per_s = bench_input.bench(images, batch_size=4, steps=3, warmup=2)
  # 10 examples make 2 steps of 4 an epoch: the step numbers wrap. The
  # warm-up is finished before the clock starts.
  assert events == ["make 4", 0, 1, "block", "clock", 0, 1, 0, "block",
                    "clock"]
  assert img_per_s == 4 * 3 / 0.75


def test_bench_input_step_is_the_train_steps_input():
  # Channel 0: the example's index; 1: the column; 2: the row.
  n, side, batch = 16, 8, 4
  rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  images = np.stack(
      [np.broadcast_to(np.arange(n)[:, None, None], (n, side, side)),
       np.broadcast_to(cols, (n, side, side)),
       np.broadcast_to(rows, (n, side, side))], axis=-1).astype(np.uint8)
  key = jax.random.key(0)
  perm = device_epoch.epoch_permutation(key, n)
  out = np.asarray(bench_input.make_step(batch)(jnp.asarray(images), perm,
                                                key, 1))
  assert out.shape == (batch, side, side, 3) and out.dtype == np.float32
  # pylint: disable-next=protected-access
  mean, std = np.array(bench_input._MEAN), np.array(bench_input._STD)
  # Normalised pixels of the second batch of the permutation.
  indices = np.asarray(perm[batch:2 * batch])
  np.testing.assert_allclose(
      out[..., 0], np.broadcast_to(((indices - mean[0]) / std[0])[
          :, None, None], (batch, side, side)), rtol=1e-6)
  raw = np.round(out * std + mean)
  # Cropped and flipped: not every image is where it was.
  moved = [not (np.array_equal(raw[k, ..., 1], cols)
                and np.array_equal(raw[k, ..., 2], rows))
           for k in range(batch)]
  assert any(moved), raw
