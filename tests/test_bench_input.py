"""`python -m ban_jax.tools.bench_input`: the train step's input, timed."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax import train
from ban_jax.runtime import parallel
from ban_jax.tools import bench_input
from ban_jax.tools.bench_input import main as bench_input_main


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
    # The batch is split over the devices, as in training (8 here).
    (["--batch_sizes=8,12"], "--batch_sizes='8,12': batch_size=12 is not "
     "divisible by the 8 devices; use a multiple of 8."),
])
def test_bench_input_refuses_bad_flags_before_any_compute(capsys, flags,
                                                          message):
  with pytest.raises(SystemExit) as stop:
    bench_input_main(flags)
  assert stop.value.code == 2
  assert message in capsys.readouterr().err


def test_bench_input_main_passes_its_flags_and_rounds(monkeypatch, capsys):
  calls = []

  def fake_bench(images, labels, batch_size, steps, mesh, warmup):
    calls.append((images.shape, images.dtype, labels.shape, batch_size,
                  steps, mesh.devices.size, warmup))
    return 1234.5678 * batch_size

  monkeypatch.setattr(bench_input, "bench", fake_bench)
  bench_input_main(["--steps=7", "--warmup=2", "--batch_sizes=8,16",
                    "--num_examples=64"])
  assert calls == [((64, 32, 32, 3), jnp.uint8, (64,), batch, 7, 8, 2)
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

  def fake_make_step(batch_size, mesh):
    del mesh
    def step(images, labels, perm, key, step_in_epoch):
      del images, labels, perm, key
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
  img_per_s = bench_input.bench(images, jnp.zeros(10, jnp.int32),
                                batch_size=4, steps=3, mesh=None, warmup=2)
  # 10 examples make 2 steps of 4 an epoch: the step numbers wrap. The
  # warm-up is finished before the clock starts.
  assert events == ["make 4", 0, 1, "block", "clock", 0, 1, 0, "block",
                    "clock"]
  assert img_per_s == 4 * 3 / 0.75


def test_bench_input_step_is_the_train_steps_input():
  # Channel 0: the example's index; 1: the column; 2: the row.
  n, side, batch = 16, 8, 8
  rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  images = np.stack(
      [np.broadcast_to(np.arange(n)[:, None, None], (n, side, side)),
       np.broadcast_to(cols, (n, side, side)),
       np.broadcast_to(rows, (n, side, side))], axis=-1).astype(np.uint8)
  labels = np.arange(n, dtype=np.int32) + 100
  mesh = parallel.make_mesh()
  images, labels = parallel.put_train_split((images, labels), mesh)
  key = jax.random.key(0)
  perm = train.epoch_permutation(key, n)
  out, out_labels = bench_input.make_step(batch, mesh)(images, labels, perm,
                                                       key, 1)
  assert out.shape == (batch, side, side, 3) and out.dtype == np.float32
  # Split over the devices as the train step's batch is.
  assert out.sharding.is_equivalent_to(parallel.batch_sharded(mesh), 4)
  out = np.asarray(out)
  mean, std = np.array(bench_input.MEAN), np.array(bench_input.STD)
  # Normalised pixels and labels of the second batch of the permutation.
  indices = np.asarray(perm[batch:2 * batch])
  np.testing.assert_array_equal(np.asarray(out_labels), indices + 100)
  np.testing.assert_allclose(
      out[..., 0], np.broadcast_to(((indices - mean[0]) / std[0])[
          :, None, None], (batch, side, side)), rtol=1e-6)
  raw = np.round(out * std + mean)
  # Cropped and flipped: not every image is where it was.
  moved = [not (np.array_equal(raw[k, ..., 1], cols)
                and np.array_equal(raw[k, ..., 2], rows))
           for k in range(batch)]
  assert any(moved), raw
