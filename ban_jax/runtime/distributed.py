"""Multi-host start-up: JAX's multi-controller runtime when launched so.

One Python process runs per host (or per GPU); they find each other through
a coordinator (process 0's address and a free port) and then run the same
program, each driving its local devices. `initialize()` must run before
anything touches a device. It decides from explicit arguments, then from
the environment, in this order:

1. Arguments `coordinator_address`, `num_processes`, `process_id` (what the
   `--coordinator_address/--num_processes/--process_id` flags of
   `ban_jax.tools.bench` pass), or the same three as environment variables
   `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (what
   `launch/local_multiprocess.sh` sets): all three or none. `num_processes`
   of 1 means a single process.
2. `BAN_JAX_DISTRIBUTED=0` turns multi-process start-up off (e.g. a plain
   `python` inside a SLURM allocation); `=1` forces it on, letting JAX find
   the cluster itself (TPU pod slices, which `launch/tpu_pod.sh` runs).
3. SLURM: inside an `srun` step (`SLURM_STEP_NODELIST` set) with
   `SLURM_NTASKS` > 1; JAX reads the rest (`SLURM_PROCID`, the first node
   as coordinator, a port from the job id or `JAX_COORDINATOR_PORT`).
4. Open MPI (`mpirun`): `OMPI_MCA_orte_hnp_uri` set and
   `OMPI_COMM_WORLD_SIZE` > 1.
5. A multi-host Cloud TPU VM: `TPU_WORKER_HOSTNAMES` lists several hosts.

Anything else is a single-process run and nothing happens. After start-up
every process but 0 logs only warnings and errors, so a job's log is
process 0's; the pipeline writes results, reports and configs from process
0 only, and Orbax checkpoints are written by all processes together into
one directory that every host must see (a bucket, NFS, Lustre).

On CPU the processes' collectives go through gloo (JAX's default in recent
versions; set here for older ones), which is how `tests/test_multihost.py`
runs two processes on one machine.
"""

import dataclasses
import os
from typing import Mapping

import jax
from absl import logging

from ban_jax.errors import ConfigError

_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                  "JAX_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process was started, as far as multi-host goes."""
  # 'single', 'explicit', 'forced', 'slurm', 'openmpi' or 'tpu'.
  kind: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def multi_process(self) -> bool:
    return self.kind != "single"


def _int(env: Mapping[str, str], name: str, default: int = 1) -> int:
  try:
    return int(env.get(name, default))
  except ValueError:
    raise ConfigError(f"${name}={env.get(name)!r} is not an integer.") from None


def detect(env: Mapping[str, str] | None = None, *,
           coordinator_address: str | None = None,
           num_processes: int | None = None,
           process_id: int | None = None) -> Launch:
  """Decides how to start, from arguments and the environment; no side effects.

  Raises:
    ConfigError: some but not all of the explicit settings are given, or a
      value is malformed.
  """
  env = os.environ if env is None else env
  explicit = (coordinator_address, num_processes, process_id)
  if all(v is None for v in explicit) and any(env.get(v)
                                              for v in _EXPLICIT_VARS):
    coordinator_address = env.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = (_int(env, "JAX_NUM_PROCESSES")
                     if env.get("JAX_NUM_PROCESSES") else None)
    process_id = (_int(env, "JAX_PROCESS_ID")
                  if env.get("JAX_PROCESS_ID") else None)
    explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      given = dict(zip(("coordinator_address", "num_processes",
                        "process_id"), explicit))
      raise ConfigError(
          "Multi-process start-up needs the coordinator address, the number "
          "of processes and this process's id together (arguments or $"
          + ", $".join(_EXPLICIT_VARS) + f"); got {given}.")
    if num_processes == 1:
      return Launch("single")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"process_id={process_id} is not in "
                       f"[0, num_processes={num_processes}).")
    return Launch("explicit", coordinator_address, num_processes, process_id)

  switch = env.get("BAN_JAX_DISTRIBUTED", "").strip().lower()
  if switch in ("0", "false", "off", "no"):
    return Launch("single")
  if switch in ("1", "true", "on", "yes"):
    return Launch("forced")
  if switch not in ("", "auto"):
    raise ConfigError(f"$BAN_JAX_DISTRIBUTED={switch!r}: use 0, 1 or auto.")
  if env.get("SLURM_STEP_NODELIST") and _int(env, "SLURM_NTASKS") > 1:
    return Launch("slurm")
  if env.get("OMPI_MCA_orte_hnp_uri") and _int(env,
                                               "OMPI_COMM_WORLD_SIZE") > 1:
    return Launch("openmpi")
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",")
          if h.strip()]) > 1:
    return Launch("tpu")
  return Launch("single")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> Launch:
  """Starts JAX's multi-controller runtime if this is a multi-process job.

  Call once, before any other JAX call. Returns what `detect` decided.
  """
  launch = detect(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  if not launch.multi_process:
    return launch
  if getattr(jax.config, "jax_cpu_collectives_implementation",
             "gloo") in (None, "none"):
    # Without it, CPU processes cannot run collectives with each other.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if launch.kind == "explicit":
    jax.distributed.initialize(launch.coordinator_address,
                               launch.num_processes, launch.process_id)
  else:
    # SLURM, Open MPI and TPU VMs: JAX reads its own settings.
    jax.distributed.initialize()
  if jax.process_index() != 0:
    # One log per job: the others speak up only when something is wrong.
    logging.set_verbosity(logging.WARNING)
  logging.info("Process %d of %d (%s), %d local / %d global devices.",
               jax.process_index(), jax.process_count(), launch.kind,
               jax.local_device_count(), jax.device_count())
  return launch
