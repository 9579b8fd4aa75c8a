"""Helpers shared by the end-to-end tests."""

import os
import subprocess
import time

import jax
import pytest

from ban_jax import pipeline

# Wall-clock entries of a history record: they differ between any two runs.
TIMINGS = ("images_per_second", "seconds_left", "seconds",
           "chain_seconds_left")


def scores(results):
  """Everything a run computed, less the wall-clock timings."""
  return ([(g["generation"], g["test_accuracy"], g["test_metrics"],
            [{k: v for k, v in record.items() if k not in TIMINGS}
             for record in g["history"]])
           for g in results["generations"]],
          [(e["name"], e["test_accuracy"]) for e in results["ensembles"]])


def run_chain(config, workdir):
  """`pipeline.run` on one CPU device, not the session's eight.

  What the chains of these tests check (generations, checkpoints, resume,
  results) does not depend on the device count, and on one device a tiny
  chain takes a third less time. Sharded training is tested on all eight:
  test_parallel step by step, test_seeds_parallel and test_multihost end
  to end.
  """
  return pipeline.run(config, str(workdir), devices=jax.devices()[:1])


# Root writes through a folder's modes by these two capabilities.
_OVERRIDES = "-dac_override,-dac_read_search"


def obeying_file_modes(command: list[str]) -> list[str]:
  """`command`, run so that root obeys file modes as other users do.

  setpriv (util-linux) drops the capabilities from the program it starts;
  a fresh program, rather than a preexec_fn in a fork of this
  multithreaded process.
  """
  if os.geteuid() != 0:
    return command
  return ["setpriv", f"--bounding-set={_OVERRIDES}",
          f"--inh-caps={_OVERRIDES}", *command]


def skip_unless_modes_bind(folder) -> None:
  """Skips the test if such a command could still write into `folder`."""
  probe = os.path.join(folder, ".probe")
  try:
    touched = subprocess.run(obeying_file_modes(["touch", probe]),
                             capture_output=True, check=False).returncode
  except FileNotFoundError:  # No setpriv.
    touched = 0
  if touched == 0:
    if os.path.exists(probe):
      os.remove(probe)
    pytest.skip("cannot make a read-only folder bind this user")


def wait_until(condition, processes, log_path, what: str,
               timeout: float = 120) -> None:
  """Polls `condition()` until it holds, while every process still runs.

  Fails, with the end of `log_path`, if a process ends first or `timeout`
  seconds pass: `what` names the awaited moment in the message.
  """
  deadline = time.monotonic() + timeout
  while not condition():
    assert all(p.poll() is None for p in processes), (
        f"ended before {what}:\n" + open(log_path).read()[-3000:])
    assert time.monotonic() < deadline, f"no {what} in {timeout} s"
    time.sleep(0.02)
