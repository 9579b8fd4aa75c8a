"""Stopping on a signal with a checkpoint of the step reached.

Schedulers stop a job with SIGTERM and kill it a grace period later: SLURM
(`scancel`, preemption, the end of `--time`), preemptible and spot TPU VMs,
Kubernetes. Without a handler Python dies at once and the run resumes from
its last regular checkpoint (every epoch and every
`config.checkpoint_every_steps` steps). With `install()`, the train loop
finishes the compiled call in flight, saves a checkpoint of that step,
waits until it is on disk and raises `StopRequested`; rerunning the same
command resumes from that step. A second signal stops at once.

- One process: SIGTERM and SIGINT (Ctrl-C) set a flag that the train loop
  reads after every call.
- Several processes: the signal reaches some hosts, not all, yet every
  host must save the same step. JAX's preemption service, which
  `jax.distributed.initialize` starts and which catches SIGTERM, agrees on
  that step across hosts (`multihost_utils.reached_preemption_sync_point`).
  Ctrl-C is left to the launcher there. The service agrees on a step id
  past every host's latest; ids restart at each generation, so a notice
  that arrives between two generations (evaluation, compiling the next
  step) finds no common step: the hosts then train on until the scheduler
  kills them, and the run resumes from its last regular checkpoint.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
_requested: str | None = None  # The name of the signal that asked to stop.


class StopRequested(Exception):
  """A signal asked the run to stop; what was reached is checkpointed."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    # The status the signal itself would have ended the program with.
    self.exit_status = 128 + (signal.SIGINT if reason == "SIGINT"
                              else signal.SIGTERM)


def _handle(signum, frame):
  del frame
  global _requested
  if _requested is not None:  # Second signal: stop now, the usual way.
    signal.signal(signum, signal.SIG_DFL)
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    signal.raise_signal(signum)
    return
  _requested = _NAMES.get(signum, f"signal {signum}")
  logging.warning("%s received: stopping after the current train steps "
                  "with a checkpoint (send it again to stop at once).",
                  _requested)


def install() -> None:
  """Catches SIGTERM and SIGINT in a single-process run; see the module."""
  if jax.process_count() > 1:
    return  # JAX's preemption service has SIGTERM.
  if threading.current_thread() is not threading.main_thread():
    return  # Python takes signal handlers in the main thread only.
  for signum in _NAMES:
    signal.signal(signum, _handle)


def request(name: str = "a request") -> None:
  """Asks the run to stop as a signal would (for callers and tests)."""
  global _requested
  _requested = name


def reset() -> None:
  global _requested
  _requested = None


def requested() -> str | None:
  """The name of what asked this process to stop, or None.

  With several processes only `reached` sets it, so all hosts agree.
  """
  return _requested


def reached(first_step: int, last_step: int) -> str | None:
  """Whether to checkpoint and stop after the call that ran these steps.

  Returns what asked for it, or None. The train loop asks after every
  compiled call, which ran steps first_step..last_step. With several
  processes the answer comes from JAX's preemption service: it stops every
  host at the first step id past the highest one any host has reported,
  so every host reports every step (and Orbax, whose saves report theirs,
  uses the same ids); all hosts then stop after the same call.
  """
  if jax.process_count() > 1:
    try:
      for step in range(first_step, last_step + 1):
        if multihost_utils.reached_preemption_sync_point(step):
          request("SIGTERM")  # Remembered: the next generation won't start.
    except RuntimeError:  # The service is off (jax_enable_preemption_service).
      pass
  return _requested
