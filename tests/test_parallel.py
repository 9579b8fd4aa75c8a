"""Data parallelism: 1 vs 8 devices, shardings, and no retracing.

Eight virtual CPU devices (see conftest.py) stand in for a multi-GPU node.
The same global batch on one device and split over eight must give the same
parameters and batch-norm statistics after a few KD steps: that holds only
if gradients and batch-norm statistics are reduced over the global batch.
"""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ban_jax import pipeline
from ban_jax import train
from ban_jax.data import Dataset
from ban_jax.runtime import parallel
from configs import digits

# Each program runs a step or two: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

NUM_STEPS = 3
BATCH = 16


def _config():
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.model.dtype = "float32"
  config.batch_size = BATCH
  config.eval_batch_size = BATCH
  # Augmentation on: its random crops must not depend on the sharding.
  config.data.augment = True
  config.data.crop_padding = 2
  return config


def _dataset():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, (80,), dtype=np.int32)
  return Dataset(name="toy", train_images=images[:64],
                 train_labels=labels[:64], test_images=images[64:],
                 test_labels=labels[64:], num_classes=10, mean=(120.0,),
                 std=(70.0,))


class _Run:
  """A KD trainer on the given devices, after NUM_STEPS steps."""

  def __init__(self, devices, initial_state, teacher_vars):
    config = _config()
    self.mesh = parallel.make_mesh(devices)
    self.data = train.put_dataset(_dataset(), self.mesh, BATCH)
    teacher = pipeline.build_model("wrn10_1", config, 10)
    student = pipeline.build_model("wrn10_1", config, 10)
    self.trainer = train.GenerationTrainer(config, student, teacher,
                                           self.data, self.mesh)
    self.traces = 0
    one_step = self.trainer._one_step

    def counting_step(*args):
      self.traces += 1  # Runs only while jax traces the step.
      return one_step(*args)

    self.trainer._one_step = counting_step
    self.teacher_vars = parallel.put_replicated(teacher_vars, self.mesh)
    self.perm = train.epoch_permutation(jax.random.key(1),
                                        self.data.num_train)
    self.state = parallel.put_replicated(initial_state, self.mesh)
    self.sums = None
    for _ in range(NUM_STEPS):
      self.state, metrics = self.step(self.state, self.teacher_vars)
      self.sums = (metrics if self.sums is None
                   else jax.tree.map(lambda a, b: a + b, self.sums,
                                     metrics))

  def step(self, state, teacher_vars):
    return self.trainer.train_steps(1)(
        state, teacher_vars, self.data.train_images, self.data.train_labels,
        self.perm, jax.random.key(2))


def _perturbed(variables, seed):
  """A stand-in teacher: the given variables plus noise (no extra init)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
      variables)


@pytest.fixture(scope="module")
def runs():
  # One initialisation (init_state compiles each time it is called), copied
  # to both meshes, so that the runs start from the same student.
  mesh = parallel.make_mesh(jax.devices()[:1])
  data = train.put_dataset(_dataset(), mesh, BATCH)
  student = pipeline.build_model("wrn10_1", _config(), 10)
  trainer = train.GenerationTrainer(_config(), student, None, data, mesh)
  initial = parallel.fetch(trainer.init_state(jax.random.key(0)))
  teacher = _perturbed(initial.variables, 7)
  one = _Run(jax.devices()[:1], initial, teacher)
  eight = _Run(jax.devices(), initial, teacher)
  eight.initial = initial
  return one, eight


def test_mesh_shape(runs):
  one, eight = runs
  assert jax.device_count() == 8
  assert dict(one.mesh.shape) == {"process": 1, "device": 1}
  assert dict(eight.mesh.shape) == {"process": 1, "device": 8}


def test_one_and_eight_devices_agree(runs):
  one, eight = runs
  assert int(parallel.fetch(eight.state.step)) == NUM_STEPS
  # Batch-norm statistics computed per device (2 examples each) would be
  # far off; global ones differ only by float summation order.
  chex.assert_trees_all_close(parallel.fetch(one.state.batch_stats),
                              parallel.fetch(eight.state.batch_stats),
                              rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(parallel.fetch(one.state.params),
                              parallel.fetch(eight.state.params),
                              rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(parallel.fetch(one.sums),
                              parallel.fetch(eight.sums), rtol=1e-4)
  # The steps did move the parameters, so the comparison means something.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), eight.initial.params,
                       parallel.fetch(eight.state.params))
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_state_is_replicated(runs):
  _, eight = runs
  replicated = parallel.replicated(eight.mesh)
  for leaf in jax.tree.leaves(eight.state):
    assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
    assert len(leaf.addressable_shards) == 8
    assert all(s.data.shape == leaf.shape for s in leaf.addressable_shards)


def test_batch_is_sharded(runs):
  _, eight = runs
  trainer, data = eight.trainer, eight.data
  images, labels, _ = jax.jit(trainer._batch_from_device)(
      eight.state, data.train_images, data.train_labels, eight.perm,
      jax.random.key(3))
  sharding = parallel.batch_sharded(eight.mesh)
  for x in (images, labels):
    assert x.sharding.is_equivalent_to(sharding, x.ndim)
    assert x.shape[0] == BATCH
    assert sorted(s.data.shape[0] for s in x.addressable_shards) == [2] * 8
  # Device d holds rows [2d, 2d + 2) of the batch the permutation names.
  step = int(parallel.fetch(eight.state.step)) % trainer.steps_per_epoch
  idx = np.asarray(eight.perm)[step * BATCH:(step + 1) * BATCH]
  expected = _dataset().train_labels[idx]
  for shard in labels.addressable_shards:
    np.testing.assert_array_equal(shard.data, expected[shard.index])


def test_no_retrace_across_calls_and_generations(runs):
  _, eight = runs
  step_fn = eight.trainer.train_steps(1)
  assert eight.trainer.train_steps(1) is step_fn
  assert eight.traces == 1 and step_fn._cache_size() == 1
  # The next generation reuses the trainer (pipeline._trainer): a fresh
  # student and another teacher's variables, same shapes.
  state = parallel.put_replicated(
      eight.initial.replace(params=_perturbed(eight.initial.params, 5)),
      eight.mesh)
  teacher_vars = parallel.put_replicated(
      _perturbed(eight.initial.variables, 8), eight.mesh)
  for _ in range(2):
    state, _ = eight.step(state, teacher_vars)
  assert eight.traces == 1 and step_fn._cache_size() == 1


def test_take_batch_from_host_blocks():
  """The multi-host gather, on a mesh that pretends to span 2 hosts.

  Each pretend host's devices hold its half of the rows; the batch must be
  exactly the rows the indices name, whichever half holds them, for pixels
  whose byte count is not a multiple of 4 and for 2- and 4-byte types, bit
  for bit (a float sum would turn -0.0 into 0.0).
  """
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), parallel.BATCH_AXES)
  rng = np.random.default_rng(0)
  signed_zeros = np.where(rng.random((40, 3)) < 0.5, -0.0, 0.0)
  host = {"images": rng.integers(0, 256, (40, 5, 5, 3), dtype=np.uint8),
          "labels": rng.integers(0, 100, (40,), dtype=np.int32),
          "half": rng.standard_normal((40, 3)).astype(jnp.bfloat16),
          "half_zeros": signed_zeros.astype(jnp.bfloat16),
          "zeros": signed_zeros.astype(np.float32)}
  blocks = jax.device_put(host, NamedSharding(mesh, P("process")))
  idx = np.array([0, 39, 21, 19, 20, 1, 38, 2], np.int32)  # Both halves.
  batch = jax.jit(lambda tree, idx: parallel.take_batch(tree, idx, mesh))(
      blocks, idx)
  for name, x in batch.items():
    assert x.sharding.is_equivalent_to(parallel.batch_sharded(mesh), x.ndim)
    assert x.dtype == host[name].dtype
    np.testing.assert_array_equal(np.asarray(x).view(np.uint8),
                                  host[name][idx].view(np.uint8), name)


class _FakeDevice:
  """Just what make_mesh reads of a device: its process."""

  def __init__(self, process_index, name):
    self.process_index = process_index
    self.name = name

  def __repr__(self):
    return self.name


def test_make_mesh_puts_each_process_on_its_own_row():
  d = {(p, i): _FakeDevice(p, f"p{p}d{i}") for p in range(3) for i in range(2)}
  mesh = parallel.make_mesh([d[2, 1], d[0, 0], d[1, 0], d[2, 0], d[0, 1],
                             d[1, 1]])
  # Rows in process order; each row in the order the devices were given.
  assert mesh.devices.tolist() == [[d[0, 0], d[0, 1]], [d[1, 0], d[1, 1]],
                                   [d[2, 1], d[2, 0]]]
  assert dict(mesh.shape) == {"process": 3, "device": 2}
  with pytest.raises(ValueError, match=r"same number of devices.*"
                     r"\{0: 2, 1: 1\}"):
    parallel.make_mesh([d[0, 0], d[0, 1], d[1, 0]])


def _two_host_mesh():
  """Eight local devices posing as 2 hosts of 4 (single-process tests)."""
  return Mesh(np.asarray(jax.devices()).reshape(2, 4), parallel.BATCH_AXES)


def test_shardings_on_a_two_host_mesh():
  mesh = _two_host_mesh()
  x = np.arange(16 * 3).reshape(16, 3)
  by_device = lambda a: {s.device: s.data for s in a.addressable_shards}
  batch = by_device(jax.device_put(x, parallel.batch_sharded(mesh)))
  blocks = by_device(jax.device_put(x, parallel.process_sharded(mesh)))
  for h in range(2):
    for l in range(4):
      device = mesh.devices[h, l]
      # Process-major: host h's devices hold one contiguous half in order.
      i = h * 4 + l
      np.testing.assert_array_equal(batch[device], x[2 * i:2 * i + 2])
      np.testing.assert_array_equal(blocks[device], x[8 * h:8 * h + 8])
  # The batch splits over all 8 devices, not over one host's 4: what
  # validation checks batch sizes against (jax.device_count()).
  assert mesh.devices.size == jax.device_count() == 8


class _Host:
  """`jax` as one process sees it (for `parallel` only)."""

  def __init__(self):
    self.index = 0

  def process_index(self):
    return self.index

  def __getattr__(self, name):
    return getattr(jax, name)


class _Gathered(Exception):
  pass


def _process_blocks(trees, monkeypatch):
  """`process_block` on each of len(trees) pretend hosts, host h with trees[h].

  Each host first sends what it would all-gather; then every host gets all
  of them, in process order, as `process_allgather` returns them.
  """
  host = _Host()
  monkeypatch.setattr(parallel, "jax", host)
  sent = []

  def send(x):
    sent.append(np.asarray(x))
    raise _Gathered

  mesh = Mesh(np.asarray(jax.devices()[:len(trees)]).reshape(len(trees), 1),
              parallel.BATCH_AXES)
  out = []
  for gather in (send, lambda x: np.stack(sent)):
    monkeypatch.setattr(parallel, "multihost_utils",
                        types.SimpleNamespace(process_allgather=gather))
    out = []
    for host.index, tree in enumerate(trees):
      try:
        out.append(parallel.process_block(tree, mesh))
      except _Gathered:
        pass
  return out


def _split(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 3, 3, 3), dtype=np.uint8),
          rng.integers(0, 10, (n,), dtype=np.int32))


def test_process_block_cuts_a_split_that_every_host_holds(monkeypatch):
  images, labels = _split(41)
  blocks = _process_blocks([(images, labels)] * 2, monkeypatch)
  # 20 rows a host, in process order; the 41st is dropped.
  for h, (got_images, got_labels) in enumerate(blocks):
    np.testing.assert_array_equal(got_images, images[20 * h:20 * h + 20])
    np.testing.assert_array_equal(got_labels, labels[20 * h:20 * h + 20])


def test_process_block_keeps_blocks_that_differ_in_any_array(monkeypatch):
  images, labels = _split(20)
  other_images, other_labels = _split(20, seed=1)
  for trees in ([(images, labels), (images, other_labels)],
                [(images, labels), (other_images, labels)]):
    blocks = _process_blocks(trees, monkeypatch)
    for got, tree in zip(blocks, trees):
      chex.assert_trees_all_equal(got, tree)


def test_process_block_refuses_blocks_of_different_sizes(monkeypatch):
  with pytest.raises(ValueError, match=r"different sizes \(\[20, 19\] "
                     r"examples\)"):
    _process_blocks([_split(20), _split(19)], monkeypatch)


def test_take_batch_on_one_host_gathers_on_every_device():
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  host = {"images": rng.integers(0, 256, (40, 5, 5, 3), dtype=np.uint8),
          "labels": rng.integers(0, 100, (40,), dtype=np.int32)}
  data = parallel.put_train_split(host, mesh)
  idx = np.array([3, 39, 0, 17, 17, 8, 21, 5], np.int32)
  batch = jax.jit(lambda tree, idx: parallel.take_batch(tree, idx, mesh))(
      data, parallel.put_replicated(idx, mesh))
  for name, x in batch.items():
    assert x.sharding.is_equivalent_to(parallel.batch_sharded(mesh), x.ndim)
    np.testing.assert_array_equal(np.asarray(x), host[name][idx])
