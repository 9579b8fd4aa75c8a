"""Multi-host start-up: JAX's multi-controller runtime when launched so."""

import os

import jax
from absl import logging

# Variables set by the launchers we support (TPU VMs configure themselves;
# SLURM and our own launch scripts set these or SLURM_*), meaning "several
# processes make up this job".
_MULTI_PROCESS_HINTS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                        "TPU_WORKER_HOSTNAMES")


def initialize() -> None:
  """Calls jax.distributed.initialize() when this is a multi-process job."""
  if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
      os.environ.get(k) for k in _MULTI_PROCESS_HINTS
      if k != "SLURM_NTASKS"):
    return
  jax.distributed.initialize()
  logging.info("Process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
