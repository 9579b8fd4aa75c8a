"""One workdir, one writer: a lock file that a run holds for its whole life.

Two runs writing one workdir (a SLURM job requeued while the old one still
runs, the same command in a second terminal) mix their steps in the
generation folders, replace each other's config.json and resume from each
other's half-written checkpoints. `hold(workdir)` makes the second run
refuse at once, with one line that names the first.

The lock is the file `<workdir>/.lock`: a JSON record of its holder (host,
PID, run id, start time, command). Workdirs of cluster jobs live on network
file systems, where flock() may lock nothing, so the file is made the way
that is atomic on NFS too: the record is written to a file of a unique
name, which is then hard-linked to `.lock` (the link fails if the name
exists, and the record is whole the moment it appears); exclusive creation
(O_EXCL) is the fallback where hard links are not supported. While the run
holds it, a daemon thread touches the file every `HEARTBEAT_S` seconds: the
file's modification time is the holder's heartbeat.

A lock whose holder is gone is taken over, with a warning: its process has
ended (same host only; another host's processes cannot be asked, and a PID
reused by a younger process does not count), or its heartbeat is older
than `STALE_AFTER_S` (any host: a crashed node, a kill -9 elsewhere).
Contenders for one stale lock each first create a claim file named after
it, exclusively: exactly one of them replaces the lock, and the others then
find the winner's fresh lock and refuse.

The lock is released however the run ends (results written, an error, a
SIGTERM or Ctrl-C stop), except by kill -9: the rerun then finds the
holder's process gone (same host) or, after STALE_AFTER_S, its heartbeat
stale. With several processes one lock covers the job: process 0 takes it
and broadcasts the outcome, so that all processes go on, or refuse, with
the same message. A workdir this run cannot write (a read-only copy of a
finished run) is not locked: such a run cannot disturb another.
"""

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ban_jax import errors

LOCK_NAME = ".lock"
# Seconds between touches of a held lock file.
HEARTBEAT_S = 30.0
# A heartbeat this old means the holder is gone: twenty missed touches,
# far beyond a busy host's or a network file system's hiccups.
STALE_AFTER_S = 600.0
# Looks at a lock that another contender is taking over, 0.05 s apart.
_ATTEMPTS = 40
# Errors of os.link where the file system has no hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP,
                            errno.EXDEV, errno.EMLINK, errno.ENOSYS})
# Errors that mean this run cannot write the workdir at all.
_READ_ONLY = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# Bytes of process 0's refusal that the other processes get.
_MESSAGE_BYTES = 4096


class WorkdirLockedError(errors.WorkdirError):
  """Another run holds the workdir; the message names it and the way out."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """What a lock file says about the run that holds it."""
  host: str
  pid: int
  run_id: str
  started: float  # time.time() when it took the lock; 0: unknown.
  heartbeat: float  # The file's modification time.
  inode: int

  def describe(self, now: float | None = None) -> str:
    now = time.time() if now is None else now
    started = (time.strftime("%Y-%m-%d %H:%M:%S %Z",
                             time.localtime(self.started))
               if self.started else "at an unknown time")
    return (f"host {self.host}, pid {self.pid}, started {started}, last "
            f"heartbeat {_duration(now - self.heartbeat)} ago")


def _duration(seconds: float) -> str:
  seconds = max(seconds, 0.0)
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def _number(value, kind):
  try:
    return kind(value)
  except (TypeError, ValueError):
    return kind(0)


def read_holder(path: str) -> Holder | None:
  """The holder that the lock file at `path` names; None if there is none."""
  try:
    with open(path, "rb") as f:
      stat = os.fstat(f.fileno())
      text = f.read(65536)
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    record = None
  if not isinstance(record, dict):
    # Not written yet (the O_EXCL fallback), or not ours: it is then judged
    # by its heartbeat alone.
    record = {}
  return Holder(host=str(record.get("host", "an unknown host")),
                pid=_number(record.get("pid"), int),
                run_id=str(record.get("run_id", "")),
                started=_number(record.get("started"), float),
                heartbeat=stat.st_mtime, inode=stat.st_ino)


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # Another user's process: it exists.
    return True
  return True


def _process_start(pid: int) -> float | None:
  """When process `pid` started (time.time() scale), where /proc says."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f
                  if line.startswith("btime "))
    # Field 22, starttime, in clock ticks after boot; fields[0] is field 3.
    return boot + float(fields[19]) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def stale_reason(holder: Holder, stale_after_s: float = STALE_AFTER_S,
                 now: float | None = None) -> str | None:
  """Why the holder is gone (a lock to take over), or None if it may live."""
  now = time.time() if now is None else now
  if holder.host == socket.gethostname() and holder.pid > 0:
    if not _running(holder.pid):
      return f"process {holder.pid} has ended"
    start = _process_start(holder.pid)
    # A process younger than the lock only reuses the PID (after a reboot,
    # or in a restarted container with the same host name). The margin
    # allows for the clock moving since boot.
    if holder.started and start is not None and start > holder.started + 30:
      return f"process {holder.pid} is a later program with the same PID"
  age = now - holder.heartbeat
  if age > stale_after_s:
    return f"no heartbeat for {_duration(age)}"
  return None


def _write_new(path: str, data: bytes) -> bool:
  """Creates `path` holding `data`, unless it exists; whether it did."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  return True


def _create(path: str, record: dict) -> bool:
  """Makes the lock file `path` hold `record`, unless it exists."""
  data = (json.dumps(record, indent=1) + "\n").encode()
  temp = f"{path}.{record['run_id']}.tmp"
  try:
    _write_new(temp, data)
    try:
      os.link(temp, path)
      return True
    except OSError as e:
      # NFS: the reply to a link that was made can be lost, and its retry
      # then fails; the link count tells.
      if os.stat(temp).st_nlink == 2:
        return True
      if isinstance(e, FileExistsError):
        return False
      if e.errno not in _NO_HARD_LINKS:
        raise
    return _write_new(path, data)
  finally:
    with contextlib.suppress(OSError):
      os.unlink(temp)


def _take_over(path: str, stale: Holder, record: dict) -> bool:
  """Replaces the stale lock by `record`, if no other contender does."""
  claim = f"{path}.takeover.{stale.run_id or stale.inode}"
  if not _write_new(claim, (json.dumps(record) + "\n").encode()):
    return False  # Another run is taking it over.
  try:
    current = read_holder(path)
    if current is not None:
      if (current.run_id, current.inode) != (stale.run_id, stale.inode):
        return False  # Replaced in the meantime.
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return _create(path, record)
  finally:
    with contextlib.suppress(OSError):
      os.unlink(claim)


class WorkdirLock:
  """A lock this process holds, and the thread that keeps its heartbeat."""

  def __init__(self, path: str, run_id: str,
               heartbeat_s: float = HEARTBEAT_S):
    self.path = path
    self.run_id = run_id
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._beat, args=(heartbeat_s,), daemon=True,
        name=f"heartbeat of {path}")
    self._thread.start()

  def held(self) -> bool:
    """Whether the lock file is still this run's."""
    holder = read_holder(self.path)
    return holder is not None and holder.run_id == self.run_id

  def _beat(self, heartbeat_s: float) -> None:
    failing = False
    while not self._stop.wait(heartbeat_s):
      try:
        if not self.held():
          logging.error(
              "The lock %s is no longer this run's: another run took it "
              "over, taking this one for gone. Two runs may now write the "
              "same workdir; stop one of them.", self.path)
          return
        os.utime(self.path)
        failing = False
      except OSError as e:  # A network file system away for a while.
        if not failing:
          logging.warning("Could not refresh the heartbeat of %s: %s",
                          self.path, e)
        failing = True

  def release(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
    try:
      if self.held():
        os.unlink(self.path)
    except OSError as e:
      logging.warning("Could not remove the lock %s (%s); the next run "
                      "will take it over.", self.path, e)


def _locked_message(workdir: str, path: str, holder: Holder) -> str:
  return (f"{workdir} is in use by another run ({holder.describe()}): two "
          "runs in one workdir would mix their checkpoints. Wait for it to "
          f"end, or use another --workdir; if that run is gone, delete "
          f"{path} and rerun.")


def acquire(workdir, *, stale_after_s: float = STALE_AFTER_S,
            heartbeat_s: float = HEARTBEAT_S) -> WorkdirLock | None:
  """Takes the lock of the existing folder `workdir` for this process.

  Returns:
    The held lock; None where the workdir cannot be locked (a remote path,
    a folder this run cannot write).

  Raises:
    WorkdirLockedError: another run holds it.
  """
  workdir = os.fspath(workdir)
  if "://" in workdir:
    logging.info("%s is remote storage; it is not locked against a second "
                 "run.", workdir)
    return None
  path = os.path.join(workdir, LOCK_NAME)
  run_id = uuid.uuid4().hex
  started = time.time()
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "run_id": run_id, "started": started,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                        time.localtime(started)),
            "command": " ".join(sys.argv)}
  for _ in range(_ATTEMPTS):
    try:
      if _create(path, record):
        return WorkdirLock(path, run_id, heartbeat_s)
    except OSError as e:
      if e.errno not in _READ_ONLY:
        raise
      holder = read_holder(path)
      if holder is not None and stale_reason(holder, stale_after_s) is None:
        raise WorkdirLockedError(
            _locked_message(workdir, path, holder)) from None
      logging.warning("Cannot lock %s (%s): this run can only read it, so "
                      "it goes on unlocked.", workdir, e.strerror)
      return None
    holder = read_holder(path)
    if holder is None:
      continue  # Released in the meantime.
    reason = stale_reason(holder, stale_after_s)
    if reason is None:
      raise WorkdirLockedError(_locked_message(workdir, path, holder))
    if _take_over(path, holder, record):
      logging.warning(
          "Took over the lock %s from a run that is gone (%s; it was %s). "
          "If that run is in fact still writing there, stop one of the "
          "two.", path, reason, holder.describe())
      return WorkdirLock(path, run_id, heartbeat_s)
    time.sleep(0.05)  # Another contender is taking it over: look again.
  raise WorkdirLockedError(
      f"The lock {path} of {workdir} stays stale while another run is "
      f"taking it over ({path}.takeover.*). If no other run is starting "
      "there, delete those files and rerun.")


def _from_process_0(message: str) -> str:
  """Process 0's `message`, on every process."""
  data = np.zeros(_MESSAGE_BYTES, np.int32)
  encoded = np.frombuffer(message.encode()[:_MESSAGE_BYTES], np.uint8)
  data[:len(encoded)] = encoded
  out = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(out.astype(np.uint8)).rstrip(b"\0").decode(errors="replace")


def acquire_for_job(acquire_here: Callable[[], WorkdirLock | None]
                    ) -> WorkdirLock | None:
  """`acquire_here()` on process 0; every process learns the outcome.

  Returns process 0's lock there, None on the others.

  Raises:
    WorkdirLockedError: on every process, if process 0 was refused.
  """
  if jax.process_count() == 1:
    return acquire_here()
  lock, refusal, error = None, "", None
  if jax.process_index() == 0:
    try:
      lock = acquire_here()
    except WorkdirLockedError as e:
      refusal = str(e)
    except Exception as e:  # pylint: disable=broad-except
      # Raised below, once the other processes know: they would wait for
      # the broadcast forever.
      error, refusal = e, (f"Process 0 could not lock the workdir: "
                           f"{type(e).__name__}: {e}")
  refusal = _from_process_0(refusal)
  if error is not None:
    raise error
  if refusal:
    raise WorkdirLockedError(refusal)
  return lock


@contextlib.contextmanager
def hold(workdir, *, stale_after_s: float = STALE_AFTER_S,
         heartbeat_s: float = HEARTBEAT_S):
  """Holds the existing folder `workdir` for the job while the block runs.

  Raises:
    WorkdirLockedError: another run holds it (on every process).
  """
  lock = acquire_for_job(lambda: acquire(
      workdir, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s))
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
