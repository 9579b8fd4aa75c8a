"""Data parallelism with `jax.jit` over a one-axis device mesh.

Parameters, optimiser state and the device-resident dataset are replicated;
each global batch is split over the mesh's 'data' axis. Under `jit`, XLA
inserts the cross-device reductions itself: gradients are averaged over the
global batch, and batch-norm statistics in train mode are computed over the
global batch too (the same numbers as one device with the whole batch).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device of every process (or those given)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(
        f"{what}={batch_size} is not divisible by the {num_devices} devices; "
        f"use a multiple of {num_devices}.")


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


def fetch(tree):
  """Replicated device pytree -> host numpy, on any process.

  Reads this process's first local copy, so it works on multi-host arrays
  too, where `jax.device_get` of a non-addressable array would fail.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
