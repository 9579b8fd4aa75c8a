"""Stopping on SIGTERM / Ctrl-C: the signal handler and the hosts' agreement.

End to end: tests/test_pipeline.py (a request mid-generation is
checkpointed and resumed exactly), tests/test_faults.py (SIGTERM to
the command line), tests/test_multihost.py (SIGTERM to one of two hosts).
"""

import signal

import jax
import pytest
from jax.experimental import multihost_utils

from ban_jax.runtime import preemption


@pytest.fixture(autouse=True)
def _clean_state():
  handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  preemption.reset()
  yield
  preemption.reset()
  for signum, handler in handlers.items():
    signal.signal(signum, handler)


def test_install_takes_sigterm_and_sigint_in_one_process():
  preemption.install()
  for signum in (signal.SIGTERM, signal.SIGINT):
    assert signal.getsignal(signum) is preemption._handle  # pylint: disable=protected-access


def test_install_leaves_sigterm_to_jax_with_several_processes(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  before = signal.getsignal(signal.SIGTERM)
  preemption.install()
  assert signal.getsignal(signal.SIGTERM) is before


def test_first_signal_asks_to_stop_the_second_stops_at_once(caplog):
  preemption.install()
  with caplog.at_level("WARNING"):
    preemption._handle(signal.SIGINT, None)  # pylint: disable=protected-access
  assert preemption.requested() == "SIGINT"
  assert preemption.reached(1, 1) == "SIGINT"
  assert "SIGINT received: stopping after the current train steps" in (
      caplog.text)
  # The second Ctrl-C is the usual KeyboardInterrupt, and so is any after.
  with pytest.raises(KeyboardInterrupt):
    preemption._handle(signal.SIGINT, None)  # pylint: disable=protected-access
  assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL


def test_no_request_no_stop():
  assert preemption.requested() is None
  assert preemption.reached(1, 10) is None


def test_exit_status_is_the_signals():
  assert preemption.StopRequested("m", "SIGTERM").exit_status == 143
  assert preemption.StopRequested("m", "SIGINT").exit_status == 130
  assert preemption.StopRequested("m", "a request").exit_status == 143


def test_several_processes_report_every_step_and_stop_at_the_sync_point(
    monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  reported = []

  def sync_point_at_7(step):
    reported.append(step)
    return step == 7
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      sync_point_at_7)
  assert preemption.reached(1, 4) is None
  # The call that ran steps 5-8 passes step 7: stop after it. Every step is
  # still reported, so the host's last id is its step, as Orbax reports.
  assert preemption.reached(5, 8) == "SIGTERM"
  assert reported == [1, 2, 3, 4, 5, 6, 7, 8]
  assert preemption.requested() == "SIGTERM"  # The next generation sees it.


def test_several_processes_without_the_service_never_stop(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def service_off(step):
    raise RuntimeError(f"Preemption sync manager has not been initialized "
                       f"({step})")
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      service_off)
  assert preemption.reached(1, 3) is None
