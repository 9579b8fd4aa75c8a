"""Data parallelism with `jax.jit` over a (process, device) mesh; no pmap.

The mesh has two axes: `process` (one row per host, i.e. per JAX process)
and `device` (that host's local devices). With one process it is simply
(1, number of devices). Parameters, optimiser state and the test split are
replicated; each global batch is split over both axes together, so every
device gets `batch_size / device_count` examples.

Under `jit`, XLA inserts the cross-device reductions itself: gradients are
averaged over the global batch, and batch-norm statistics in train mode are
computed over the global batch too (the same numbers as one device holding
the whole batch, up to float summation order; `tests/test_parallel.py`
checks 1 vs 8 devices). There is no per-device batch-norm option: the
models' BatchNorm has no `axis_name`, and under `jit` the mean over the
batch axis is a global mean whatever the sharding.

Training data on several hosts. A multi-process run keeps on each host only
that host's block of the train split (CIFAR's loader reads only its block;
a loader that gives every host the whole split is cut to the same blocks
here), replicated on the host's local devices: the global train array is
the concatenation of the hosts' blocks in process order, sharded over the
`process` axis (`put_train_split`). A step's batch is still the global
permutation's next `batch_size` indices into that global array, exactly as
on one process, so the run computes the same thing whatever the number of
hosts; `take_batch` fetches the rows from whichever host holds them with
one reduce-scatter over the `process` axis (the uint8 pixels packed into
32-bit words; a batch of 128 CIFAR images is 384 KiB). On one process it is the plain gather.

Seeds side by side (config.parallel_seeds). `make_seed_mesh` lays the
devices out as (seed, process, device): `seed` shards the seeds' stacked
states (`seed_sharded`), and the pair (process, device) is each seed's data
axis, so the per-seed step's batch sharding (`batch_sharded`) keeps its
meaning and becomes P('seed', ('process', 'device')) under
a `shard_map` that is manual over `seed` only (each device runs `jax.vmap`
over its own seeds; XLA partitions the data axes as usual). A seed's
gradients are reduced over its own data shards only: nothing crosses
between seeds. The train split is replicated on every device of that
mesh, so `process` is 1 there and a seed's batch is the plain gather. On
several hosts the hosts' blocks are gathered once onto every device
(`train.SeedGroupTrainer.put_data`), and a seed's devices are one host's
where the counts allow (8 hosts, 8 seeds: a host a seed).
"""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ban_jax.errors import ConfigError

SEED_AXIS = "seed"
PROCESS_AXIS = "process"
DEVICE_AXIS = "device"
# The batch dimension is split over both axes: process-major, so a host's
# devices hold one contiguous slice of the global batch.
BATCH_AXES = (PROCESS_AXIS, DEVICE_AXIS)


def make_mesh(devices=None) -> Mesh:
  """A (process, device) mesh over every device of every process.

  Args:
    devices: the devices to use (default `jax.devices()`); every process
      must contribute the same number of them.

  Returns:
    A mesh whose row `i` holds process `i`'s devices, in the order given.
  """
  devices = list(jax.devices() if devices is None else devices)
  by_process = {}
  for device in devices:
    by_process.setdefault(device.process_index, []).append(device)
  rows = [by_process[p] for p in sorted(by_process)]
  if len({len(row) for row in rows}) != 1:
    counts = {p: len(row) for p, row in sorted(by_process.items())}
    raise ConfigError(f"Every process needs the same number of devices in "
                     f"the mesh; got {counts} (process: devices).")
  return Mesh(np.asarray(rows), BATCH_AXES)


def make_seed_mesh(num_seeds: int, devices=None) -> Mesh:
  """A (seed, process, device) mesh for `num_seeds` seeds side by side.

  The seed axis takes gcd(num_seeds, devices) shards, the data axes the
  rest: 8 devices give 4 seeds (4, 1, 2), 8 seeds (8, 1, 1), 16 seeds
  (8, 1, 1) with two seeds a device, 3 seeds (1, 1, 8). Devices are taken
  process-major, so a seed shard's devices are one host's where the count
  allows; the data axes' `process` has size 1 (each seed's batch is read
  from a train split replicated on its devices: `take_batch`'s one-host
  path).
  """
  rows = make_mesh(devices).devices
  flat = rows.reshape(-1)
  seed_shards = math.gcd(num_seeds, flat.size)
  return Mesh(flat.reshape(seed_shards, 1, flat.size // seed_shards),
              (SEED_AXIS,) + BATCH_AXES)


def data_shards(mesh: Mesh) -> int:
  """The devices one seed's batch is split over (all, on a plain mesh)."""
  return mesh.shape[PROCESS_AXIS] * mesh.shape[DEVICE_AXIS]


def seed_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (seed) axis split over the seed mesh's `seed` axis."""
  return NamedSharding(mesh, P(SEED_AXIS))


def device_memory_limit(mesh: Mesh) -> int | None:
  """Bytes one device of `mesh` can hold, or None where the backend does
  not say (CPU)."""
  try:
    stats = mesh.devices.flat[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # Some backends raise rather than return None.
  return (stats or {}).get("bytes_limit")


def num_processes(mesh: Mesh) -> int:
  return mesh.shape[PROCESS_AXIS]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _in_context(sharding: NamedSharding) -> NamedSharding:
  """`sharding` for a constraint traced here: inside a `shard_map` that is
  manual over some axes (the seeds' step), the same spec on the context's
  mesh, where those axes are manual; a constraint must name that mesh."""
  context = jax.sharding.get_abstract_mesh()
  if context.empty or not context.manual_axes:
    return sharding
  return NamedSharding(context, sharding.spec)


def process_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over hosts, replicated over each host's devices."""
  return NamedSharding(mesh, P(PROCESS_AXIS))


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree on every device of the mesh.

  Every process passes the same values (each host holds the full arrays),
  which is what `make_array_from_callback` needs across hosts.
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def _fingerprint(tree) -> tuple[int, int]:
  """(rows, crc32 of every byte): equal on two hosts iff the data are."""
  leaves = [np.ascontiguousarray(x) for x in jax.tree.leaves(tree)]
  crc = 0
  for leaf in leaves:
    crc = zlib.crc32(leaf.view(np.uint8).reshape(-1), crc)
  return leaves[0].shape[0], crc


def process_block(tree, mesh: Mesh):
  """This host's block of a host-side split (arrays with one leading axis).

  If every process holds the same arrays (a loader that reads the whole
  split everywhere), process `i` keeps rows `[i * k, (i + 1) * k)` with
  `k = n // process_count`, dropping the last `n % process_count` rows as
  the CIFAR loader does. Otherwise each process already holds its own
  block, and the blocks must have the same size so that every host runs the
  same number of steps.
  """
  count = num_processes(mesh)
  if count == 1:
    return tree
  rows, crc = _fingerprint(tree)
  # int32 pieces: without jax_enable_x64 the gather would truncate int64.
  gathered = np.asarray(multihost_utils.process_allgather(
      np.array([rows, crc >> 16, crc & 0xFFFF], np.int32))).reshape(-1, 3)
  if (gathered == gathered[0]).all():
    per_host = rows // count
    start = jax.process_index() * per_host
    return jax.tree.map(lambda x: x[start:start + per_host], tree)
  if len(set(gathered[:, 0].tolist())) != 1:
    raise ValueError(
        "The hosts hold train blocks of different sizes "
        f"({gathered[:, 0].tolist()} examples); every host must load the "
        "same number so that they run the same steps.")
  return tree


def put_train_split(tree, mesh: Mesh):
  """Puts the train split on the devices: replicated, or one block a host.

  On one process this is `put_replicated`. On several, each process passes
  its host's arrays (see `process_block`) and gets back global arrays, the
  concatenation of all hosts' blocks in process order, each host's block
  replicated on that host's devices; `take_batch` reads batches from them.
  """
  if num_processes(mesh) == 1:
    return put_replicated(tree, mesh)
  tree = process_block(tree, mesh)
  sharding = process_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * num_processes(mesh),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(put, tree)


def take_batch(tree, idx: jax.Array, mesh: Mesh):
  """Rows `idx` of device-resident train arrays, as a batch-sharded batch.

  To be called inside `jit`. `idx` is the (batch,) replicated vector of
  global row indices; `tree` holds arrays placed by `put_train_split`.
  """
  if num_processes(mesh) == 1:
    # The data are replicated: every device gathers its own slice of rows.
    idx = jax.lax.with_sharding_constraint(idx,
                                           _in_context(batch_sharded(mesh)))
    return jax.tree.map(lambda x: x[idx], tree)
  hosts, local = mesh.shape[PROCESS_AXIS], mesh.shape[DEVICE_AXIS]
  per_device = idx.shape[0] // (hosts * local)

  def gather(idx, *blocks):
    # Device (h, l) ends with batch slice h * local + l. The slices that end
    # on devices (*, l) are gathered by each host's device l from its own
    # block (zeros where another host holds the row) and summed over hosts
    # with a reduce-scatter, so each row crosses the network once.
    host = jax.lax.axis_index(PROCESS_AXIS)
    column = jax.lax.axis_index(DEVICE_AXIS)
    wanted = jax.lax.dynamic_index_in_dim(
        idx.reshape(hosts, local, per_device), column, axis=1,
        keepdims=False)  # (hosts, per_device)
    out = []
    for block in blocks:
      rows = block.shape[0]
      local_idx = wanted - host * rows
      here = (local_idx >= 0) & (local_idx < rows)
      picked = block[jnp.clip(local_idx, 0, rows - 1)]
      picked = jnp.where(here.reshape(here.shape + (1,) * (block.ndim - 1)),
                         picked, jnp.zeros((), block.dtype))
      out.append(_sum_over_hosts(picked))
    return tuple(out)

  leaves, treedef = jax.tree.flatten(tree)
  gathered = jax.shard_map(
      gather, mesh=mesh,
      in_specs=(P(),) + (P(PROCESS_AXIS),) * len(leaves),
      out_specs=(P(BATCH_AXES),) * len(leaves))(idx, *leaves)
  return jax.tree.unflatten(treedef, gathered)


def _sum_over_hosts(x: jax.Array) -> jax.Array:
  """psum_scatter over the process axis of (hosts, ...) rows, bit-exact.

  Only one host contributes a non-zero value per element, so the sum is a
  copy. Types narrower than 32 bits (the uint8 pixels) travel packed four
  bytes to a uint32 word: the same traffic, and no reliance on every
  backend's collectives supporting 8-bit sums. Floats travel packed too,
  whatever their width: a float sum is not a copy (-0.0 + 0.0 is 0.0).
  """
  itemsize = jnp.dtype(x.dtype).itemsize
  if itemsize >= 4 and jnp.issubdtype(x.dtype, jnp.integer):
    return jax.lax.psum_scatter(x, PROCESS_AXIS, scatter_dimension=0)
  lead, rest = x.shape[:2], x.shape[2:]
  raw = x.reshape(lead + (-1,))
  if itemsize > 1:
    raw = jax.lax.bitcast_convert_type(raw, jnp.uint8).reshape(lead + (-1,))
  num_bytes = raw.shape[-1]
  raw = jnp.pad(raw, ((0, 0), (0, 0), (0, -num_bytes % 4)))
  words = jax.lax.bitcast_convert_type(
      raw.reshape(lead + (-1, 4)), jnp.uint32)
  words = jax.lax.psum_scatter(words, PROCESS_AXIS, scatter_dimension=0)
  raw = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(
      lead[1:] + (-1,))[..., :num_bytes]
  if itemsize > 1:
    raw = jax.lax.bitcast_convert_type(
        raw.reshape(lead[1:] + (-1, itemsize)), x.dtype)
  return raw.reshape(lead[1:] + rest)


def fetch(tree):
  """Device pytree -> host numpy, the same on every process.

  A replicated array is read from this process's first local copy (no
  transfer between hosts); a sharded one is assembled, across hosts with an
  all-gather, so every process must call `fetch` on it at the same point of
  the program, as SPMD code does anyway. Non-array leaves pass through
  `np.asarray`.
  """

  def get(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)
