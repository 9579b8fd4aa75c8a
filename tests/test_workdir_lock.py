"""One workdir, one writer, one set of settings.

The lock (`ban_jax/runtime/workdir_lock.py`) on its own: refusals, heartbeat,
take-over of stale locks (also by racing contenders), the decision on
several hosts. Then through the command line, on one finished tiny run
copied for each test: a second run on a workdir in use, stale locks, and
reruns after config.json was lost or damaged, where the settings saved
with the checkpoints decide. Each end-to-end test checks the exit status,
the one message, and that every file of the finished generations is
byte-identical afterwards.

This file is also the worker of the two-process test:
`python tests/test_workdir_lock.py WORKDIR OUT`.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from etils import epath
from jax.experimental import multihost_utils

from ban_jax import errors
from ban_jax import pipeline
from ban_jax.runtime import checkpoints
from ban_jax.runtime import run_settings
from ban_jax.runtime import workdir_lock
from configs import digits
from tests import run_results
from tests.run_results import scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
# pylint: disable=protected-access
_check_workdir_config = pipeline._check_workdir_config
_from_process_0 = workdir_lock._from_process_0
# pylint: enable=protected-access
# The tiny chain every end-to-end test here runs: 21 steps a generation.
TINY = ("--config.model.name=wrn10_1", "--config.num_generations=1",
        "--config.num_epochs=1", "--config.optim.lr_decay_epochs=()")


def _lock_record(**fields) -> str:
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "run_id": "0123abcd", "started": time.time()}
  record.update(fields)
  return json.dumps(record)


def _plant(workdir: pathlib.Path, age_s: float = 0.0, **fields) -> str:
  """A lock file in `workdir` as another run would leave it."""
  path = workdir / workdir_lock.LOCK_NAME
  path.write_text(_lock_record(**fields))
  if age_s:
    then = time.time() - age_s
    os.utime(path, (then, then))
  return str(path)


def _dead_pid() -> int:
  """The PID of a process of this host that has ended (and been reaped)."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


# --------------------------------------------------------- the lock alone


def test_a_held_workdir_is_refused_with_one_line_naming_the_holder(
    tmp_path):
  lock = workdir_lock.acquire(tmp_path)
  path = tmp_path / ".lock"
  record = json.loads(path.read_text())
  assert record["host"] == socket.gethostname()
  assert record["pid"] == os.getpid() and record["run_id"] == lock.run_id
  assert abs(record["started"] - time.time()) < 60
  with pytest.raises(workdir_lock.WorkdirLockedError) as refused:
    workdir_lock.acquire(tmp_path)
  message = str(refused.value)
  assert "\n" not in message
  assert message.startswith(
      f"{tmp_path} is in use by another run (host {socket.gethostname()}, "
      f"pid {os.getpid()}, started ")
  assert ", last heartbeat 0 s ago)" in message
  assert message.endswith(f"if that run is gone, delete {path} and rerun.")
  lock.release()
  assert not path.exists()
  assert sorted(os.listdir(tmp_path)) == []  # No temporary files left.
  workdir_lock.acquire(tmp_path).release()  # Free again.


def test_the_heartbeat_touches_the_lock_file(tmp_path):
  lock = workdir_lock.acquire(tmp_path, heartbeat_s=0.02)
  path = tmp_path / ".lock"
  os.utime(path, (1000.0, 1000.0))
  run_results.wait_until(lambda: path.stat().st_mtime > 1000.0, [], path,
                         "heartbeat", timeout=10)
  lock.release()


def test_a_lock_taken_from_under_a_run_is_left_alone(tmp_path, caplog):
  lock = workdir_lock.acquire(tmp_path, heartbeat_s=0.02)
  path = tmp_path / ".lock"
  path.unlink()
  path.write_text(_lock_record(run_id="another"))
  run_results.wait_until(lambda: "no longer this run's" in caplog.text, [],
                         path, "error", timeout=10)
  lock.release()
  assert json.loads(path.read_text())["run_id"] == "another"  # Still there.


@pytest.mark.parametrize("holder, reason", [
    ("dead pid", "process {pid} has ended"),
    ("old heartbeat elsewhere", r"no heartbeat for 6\d min"),
    ("reused pid", "process {pid} is a later program with the same PID"),
])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, holder,
                                                   reason):
  if holder == "dead pid":
    pid = _dead_pid()
    path = _plant(tmp_path, pid=pid)
  elif holder == "old heartbeat elsewhere":
    pid = 4242
    path = _plant(tmp_path, age_s=3600, host="node-that-crashed", pid=pid)
  else:  # This very process, but the lock is older than it (a reboot).
    pid = os.getpid()
    path = _plant(tmp_path, started=1000.0)
  with caplog.at_level("WARNING"):
    lock = workdir_lock.acquire(tmp_path)
  assert lock.held()
  assert re.search(
      re.escape(f"Took over the lock {path} from a run that is gone (") +
      reason.format(pid=pid), caplog.text)
  lock.release()
  assert not os.path.exists(path)


def test_a_live_holder_elsewhere_is_not_taken_over(tmp_path):
  _plant(tmp_path, age_s=60, host="another-node", pid=4242)
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=r"host another-node, pid 4242, .* last heartbeat "
                     r"6\d s ago"):
    workdir_lock.acquire(tmp_path)
  # Ten minutes without a heartbeat by default; the timeout is an argument.
  workdir_lock.acquire(tmp_path, stale_after_s=30).release()


def test_only_one_of_racing_contenders_takes_over_a_stale_lock(tmp_path):
  outcomes = []
  for _ in range(3):  # A race: a few rounds.
    _plant(tmp_path, age_s=3600, host="node-that-crashed")
    start = threading.Barrier(6)
    results = []

    def contend():
      start.wait()
      try:
        results.append(workdir_lock.acquire(tmp_path))
      except workdir_lock.WorkdirLockedError as e:
        results.append(e)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    winners = [r for r in results if isinstance(r, workdir_lock.WorkdirLock)]
    outcomes.append(len(winners))
    assert winners and winners[0].held()
    winners[0].release()
    assert [p.name for p in tmp_path.iterdir()] == []  # No claims left.
  assert outcomes == [1, 1, 1]


def test_a_lock_being_taken_over_by_another_is_not_taken_twice(tmp_path):
  stale = _plant(tmp_path, age_s=3600, host="node-that-crashed")
  claim = pathlib.Path(f"{stale}.takeover.0123abcd")
  claim.write_text("{}")  # Another contender is at it (or died at it).
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=r"stays stale while another run is taking it "
                     r"over .* delete those files and rerun\.$"):
    workdir_lock.acquire(tmp_path)
  assert json.loads(pathlib.Path(stale).read_text())["run_id"] == "0123abcd"


def test_hold_releases_on_errors_and_stop_requests(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with workdir_lock.hold(tmp_path):
      assert (tmp_path / ".lock").exists()
      raise KeyboardInterrupt
  assert not (tmp_path / ".lock").exists()


def test_a_workdir_this_run_cannot_write_is_not_locked(
    tmp_path, monkeypatch, caplog):
  def read_only(path, record):
    raise PermissionError(13, "Permission denied", path)
  monkeypatch.setattr(workdir_lock, "_create", read_only)
  with caplog.at_level("WARNING"):
    assert workdir_lock.acquire(tmp_path) is None
  assert "this run can only read it, so it goes on unlocked" in caplog.text
  # Unless a live run holds it: it is then refused all the same.
  _plant(tmp_path)
  with pytest.raises(workdir_lock.WorkdirLockedError):
    workdir_lock.acquire(tmp_path)


class _Hosts:
  """jax.process_index/count of one of two processes, and a broadcast that
  hands on what process 0 sent."""

  def __init__(self, monkeypatch):
    self.index, self.sent = 0, None
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: self.index)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all",
                        self.broadcast)

  def broadcast(self, data):
    if self.index == 0:
      self.sent = np.array(data)
    return self.sent


def test_on_several_hosts_process_0_locks_and_all_refuse_together(
    tmp_path, monkeypatch):
  hosts = _Hosts(monkeypatch)
  _plant(tmp_path)
  asked = []

  def acquire_here():
    asked.append(hosts.index)
    return workdir_lock.acquire(tmp_path)

  messages = []
  for hosts.index in (0, 1):
    with pytest.raises(workdir_lock.WorkdirLockedError) as refused:
      workdir_lock.acquire_for_job(acquire_here)
    messages.append(str(refused.value))
  assert asked == [0]  # Only process 0 looks at the file.
  assert messages[0] == messages[1]
  assert messages[0].startswith(f"{tmp_path} is in use by another run")

  (tmp_path / ".lock").unlink()
  hosts.index = 0
  lock = workdir_lock.acquire_for_job(acquire_here)
  hosts.index = 1
  assert workdir_lock.acquire_for_job(acquire_here) is None  # Goes on.
  assert asked == [0, 0]
  lock.release()

  # Another failure on process 0: raised there, a refusal elsewhere.
  def broken():
    raise OSError(5, "Input/output error")
  hosts.index = 0
  with pytest.raises(OSError, match="Input/output error"):
    workdir_lock.acquire_for_job(broken)
  hosts.index = 1
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match="^Process 0 could not lock the workdir: OSError"):
    workdir_lock.acquire_for_job(broken)


def _two_host_worker(workdir: str, out_dir: str) -> None:
  """One of two processes: holds the workdir, then finds it held."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from ban_jax.runtime import distributed
  distributed.initialize()
  # pylint: enable=g-import-not-at-top,import-outside-toplevel
  index = jax.process_index()
  facts = {}
  with workdir_lock.hold(workdir) as lock:
    facts["holds"] = lock is not None
    facts["lock_file"] = os.path.exists(os.path.join(workdir, ".lock"))
  facts["released"] = not os.path.exists(os.path.join(workdir, ".lock"))
  if index == 0:  # Another job's lock, on a host this one cannot ask.
    _plant(pathlib.Path(workdir), host="another-node", pid=7)
  try:
    with workdir_lock.hold(workdir):
      facts["refused"] = None
  except workdir_lock.WorkdirLockedError as e:
    facts["refused"] = str(e)
  with open(os.path.join(out_dir, f"facts_{index}.json"), "w") as f:
    json.dump(facts, f)


def test_two_processes_hold_one_lock_and_refuse_together(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  workdir.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "BAN_JAX_DISTRIBUTED")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             JAX_NUM_PROCESSES="2")
  processes = [subprocess.Popen(
      [sys.executable, __file__, str(workdir), str(tmp_path)],
      env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  facts = [json.loads((tmp_path / f"facts_{i}.json").read_text())
           for i in range(2)]
  assert [f["holds"] for f in facts] == [True, False]  # Process 0's lock.
  assert facts[0]["lock_file"] and facts[0]["released"]
  refusal = facts[0]["refused"]
  assert refusal == facts[1]["refused"]  # Both refuse, with one message.
  assert refusal.startswith(f"{workdir} is in use by another run (host "
                            "another-node, pid 7, started ")


def test_the_broadcast_message_survives_encoding():
  message = "w\u00e9 is in use " * 10
  assert _from_process_0(message) == message
  assert _from_process_0("") == ""


# ---------------------------------------------------- the settings alone


def test_each_checkpoint_carries_the_config_and_restore_leaves_it_out(
    tmp_path):
  config = {"seed": 0, "distill": {"loss": "kd"}, "tup": (1, 2)}
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "ckpt", config=config)
  state = {"w": np.ones(3, np.float32)}
  ckpt.save(1, state, {"history": [1]})
  ckpt.save(2, state, {"history": [1, 2]})
  ckpt.close()
  step_dir, saved = run_settings.checkpointed_config(
      epath.Path(tmp_path / "ckpt"))
  assert step_dir.name == "2"
  assert saved == {"seed": 0, "distill": {"loss": "kd"}, "tup": [1, 2]}
  restored = checkpoints.GenerationCheckpoints(tmp_path / "ckpt")
  _, _, progress = restored.restore_latest(jax.eval_shape(lambda: state))
  restored.close()
  assert progress == {"history": [1, 2]}


def test_differences_name_only_what_differs_and_count_the_rest():
  assert run_settings.differences({"a": 1, "b": 2}, {"a": 1, "b": 3}) == (
      "b: 2 there, 3 now")
  many = run_settings.differences({}, {f"f{i}": i for i in range(40)})
  assert many.count(" now") == run_settings.MAX_LISTED
  assert many.endswith("; and 34 more")
  assert "f0: '(unset)' there, 0 now" in many


# ------------------------------------------------------ the command line


def _command(workdir, cache, *overrides):
  return [sys.executable, "-m", "ban_jax.main", "--config=configs/digits.py",
          f"--workdir={workdir}", *TINY,
          f"--config.compilation_cache_dir={cache}", *overrides]


_ENV = {"JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _start(workdir, cache, log, *overrides):
  env = {**os.environ, **_ENV}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # It would take precedence.
  with open(log, "w") as out:
    return subprocess.Popen(_command(workdir, cache, *overrides), cwd=ROOT,
                            env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(process, log, timeout=240) -> tuple[int, str]:
  try:
    process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, pathlib.Path(log).read_text()


def _run(workdir, cache, log, *overrides) -> tuple[int, str]:
  return _finish(_start(workdir, cache, log, *overrides), log)


def _errors(log: str) -> list[str]:
  """The lines that are not absl's INFO and WARNING lines (nor the results
  table, which the INFO line before it introduces)."""
  return [line for line in log.splitlines()
          if line and not (line[0] in "IW" and line[1:5].isdigit())
          and not line.startswith("|")]


def _digests(workdir: pathlib.Path) -> dict[str, str]:
  """SHA-256 of every file of the generations."""
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes())
          .hexdigest() for p in sorted(workdir.glob("seed_*/**/*"))
          if p.is_file()}


@pytest.fixture(name="cache", scope="module")
def _cache(session_xla_cache):
  """The compilation cache of this module's runs."""
  return session_xla_cache


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
  """A finished tiny chain (teacher + one generation)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  code, log = _run(workdir, cache, workdir.parent / "log")
  assert code == 0, log[-3000:]
  return workdir


def _copy(finished_dir, tmp_path) -> pathlib.Path:
  copy = tmp_path / "run"
  shutil.copytree(finished_dir, copy)
  return copy


def test_a_second_run_on_a_workdir_in_use_refuses_at_once(
    finished, cache, tmp_path):
  workdir = tmp_path / "run"
  first_log = tmp_path / "first.log"
  first = _start(workdir, cache, first_log)
  try:
    run_results.wait_until(
        lambda: all((workdir / name).exists()
                    for name in (".lock", "config.json")),
        [first], first_log, "the first run's lock")
    # Frozen while the others try: it holds the lock whatever it was doing.
    first.send_signal(signal.SIGSTOP)
    before = _digests(workdir), (workdir / "config.json").read_bytes()
    holder = json.loads((workdir / ".lock").read_text())
    # A second run that waited for the lock would wait for ever: it is
    # killed after 120 s.
    second = [_start(workdir, cache, tmp_path / f"second_{i}.log", *extra)
              for i, extra in enumerate([
                  (), ("--config.distill.loss=cwtm",
                       "--config.num_epochs=2")])]
    outcomes = [_finish(p, tmp_path / f"second_{i}.log", timeout=120)
                for i, p in enumerate(second)]
    assert (_digests(workdir),
            (workdir / "config.json").read_bytes()) == before
  except BaseException:
    first.kill()
    raise
  finally:
    first.send_signal(signal.SIGCONT)
  for code, log in outcomes:
    assert code == 1, log[-3000:]
    assert _errors(log) == [
        f"ERROR: {workdir} is in use by another run (host "
        f"{socket.gethostname()}, pid {holder['pid']}, started "
        f"{holder['started_at']}, last heartbeat " +
        _errors(log)[0].split(", last heartbeat ")[1]]
    assert _errors(log)[0].endswith(
        f"if that run is gone, delete {workdir}/.lock and rerun.")
    assert "gen 0 epoch" not in log  # Refused before any training.

  code, log = _finish(first, first_log)
  assert code == 0, log[-3000:]
  assert not (workdir / ".lock").exists()
  expected = json.loads((finished / "results.json").read_text())
  assert scores(json.loads((workdir / "results.json").read_text())) == (
      scores(expected))


@pytest.mark.parametrize("holder", ["dead pid", "other host"])
def test_a_stale_lock_is_taken_over_and_the_run_goes_on(
    finished, cache, tmp_path, holder):
  workdir = _copy(finished, tmp_path)
  before = _digests(workdir)
  if holder == "dead pid":
    pid = _dead_pid()
    _plant(workdir, pid=pid)
    reason = f"process {pid} has ended"
  else:
    _plant(workdir, age_s=3600, host="node-that-crashed", pid=4242)
    reason = r"no heartbeat for 6\d min"  # An hour, and the start-up.
  code, log = _run(workdir, cache, tmp_path / "log")
  assert code == 0, log[-3000:]
  assert re.search(
      re.escape(f"Took over the lock {workdir}/.lock from a run that is gone "
                "(") + reason + "; it was host ", log)
  assert "Generation 1: finished earlier" in log
  assert _errors(log) == []
  assert not (workdir / ".lock").exists()
  assert _digests(workdir) == before


def _damage(workdir: pathlib.Path, damage: str) -> None:
  if damage == "deleted":
    (workdir / "config.json").unlink()
  else:
    (workdir / "config.json").write_text(damage)


@pytest.mark.parametrize("damage", ["deleted", "{}"])
def test_a_lost_config_json_is_rebuilt_and_other_settings_refused(
    finished, cache, tmp_path, damage):
  workdir = _copy(finished, tmp_path)
  original = (workdir / "config.json").read_text()
  _damage(workdir, damage)
  before = _digests(workdir)
  code, log = _run(workdir, cache, tmp_path / "log",
                   "--config.distill.loss=cwtm", "--config.num_epochs=2")
  assert code == 1, log[-3000:]
  assert _errors(log) == [
      f"ERROR: {workdir} holds generations trained with other settings "
      "(distill.loss: 'kd' there, 'cwtm' now; num_epochs: 1 there, 2 now). "
      f"Use a new --workdir, or rerun with the settings in "
      f"{workdir}/config.json."]
  assert "rebuilt from the config saved with" in log
  assert _digests(workdir) == before
  assert (json.loads((workdir / "config.json").read_text())
          == json.loads(original))


def _tiny_config():
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.num_generations = 1
  config.num_epochs = 1
  config.optim.lr_decay_epochs = ()
  return config


@pytest.mark.parametrize("damage", ["deleted", "", "null", "[]", "{}"])
def test_every_kind_of_lost_config_json_is_rebuilt(finished, tmp_path,
                                                    caplog, damage):
  workdir = _copy(finished, tmp_path)
  original = json.loads((workdir / "config.json").read_text())
  before = _digests(workdir)
  _damage(workdir, damage)
  config = _tiny_config()
  config.distill.loss = "cwtm"
  with pytest.raises(errors.ConfigError,
                     match=r"^\S+ holds generations trained with other "
                     r"settings \(distill.loss: 'kd' there, 'cwtm' now\)\."):
    _check_workdir_config(epath.Path(workdir), config)
  assert json.loads((workdir / "config.json").read_text()) == original
  assert _digests(workdir) == before
  problem = {"deleted": "is missing", "": "cannot be read (Expecting value",
             "null": "cannot be read (it holds 'null')",
             "[]": "cannot be read (it holds '[]')",
             "{}": "cannot be read (it holds no settings: {})"}[damage]
  assert f"{workdir}/config.json {problem}" in caplog.text


def test_the_checkpoints_settings_bind_even_where_config_json_lies(
    finished, tmp_path, caplog):
  workdir = _copy(finished, tmp_path)
  check = _check_workdir_config
  config = _tiny_config()
  original = json.loads((workdir / "config.json").read_text())
  # The same settings, with config.json gone: rebuilt, and the run goes on.
  (workdir / "config.json").unlink()
  check(epath.Path(workdir), config)
  assert json.loads((workdir / "config.json").read_text()) == original
  # A config.json that says other settings than the checkpoints: the
  # checkpoints are what was trained.
  lie = dict(original, num_epochs=5)
  (workdir / "config.json").write_text(json.dumps(lie))
  with caplog.at_level("WARNING"):
    check(epath.Path(workdir), config)
  assert ("does not hold the settings the checkpoints were trained with "
          "(num_epochs: 1 in the checkpoints, 5 in it); rebuilt") in (
              caplog.text)
  assert json.loads((workdir / "config.json").read_text()) == original
  # Generations trained with different settings (two runs at once, before
  # the lock) do not belong together.
  metadata = next(workdir.glob("seed_0/gen_1/checkpoints/*/progress/"
                               "metadata"))
  progress = json.loads(metadata.read_text())
  progress["config"]["distill"]["loss"] = "cwtm"
  metadata.write_text(json.dumps(progress))
  with pytest.raises(errors.ConfigError,
                     match=r"gen_1/checkpoints/21 was trained with other "
                     r"settings than .*gen_0/checkpoints/21 \(distill.loss: "
                     r"'cwtm' there, 'kd' here\): the generations"):
    check(epath.Path(workdir), config)


def test_without_settings_in_the_checkpoints_a_lost_config_is_refused(
    tmp_path):
  # Checkpoints written before they carried their config.
  (tmp_path / "seed_0" / "gen_0" / "checkpoints" / "21").mkdir(parents=True)
  with pytest.raises(errors.ConfigError) as refused:
    _check_workdir_config(epath.Path(tmp_path), _tiny_config())
  assert str(refused.value).startswith(
      f"{tmp_path}/config.json is missing, so the settings of the "
      f"generations trained in {tmp_path} cannot be checked. Restore it")
  assert not (tmp_path / "config.json").exists()


if __name__ == "__main__":
  _two_host_worker(*sys.argv[1:])
