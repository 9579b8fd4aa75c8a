"""Test set-up and shared fixtures.

Eight virtual CPU devices, so multi-device paths run here, and one
compilation cache for the whole session: both must be set before JAX
initialises, i.e. before any test module imports jax. Fixtures:
`repo_root`, `tiny_digits_config` for end-to-end runs on the digits and
`session_xla_cache` for the commands the tests start.
Tests and modules marked `few_steps` compile without most of XLA's
optimisations; fixtures can use `unoptimised_xla` to do the same.
"""

import atexit
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Much of the suite's time is compiling the same small networks again:
# every pipeline.run makes new trainers, every command a test starts is a
# new process, and pytest-xdist runs the tests in two or more. One
# persistent compilation cache for all of them turns those compiles into
# cache hits (same HLO, same executable: results unchanged). pytest-xdist's
# workers inherit the controller's environment, so the process that comes
# first makes the folder and removes it when the session ends; the
# commands the tests start find it through JAX_COMPILATION_CACHE_DIR,
# which takes precedence over config.compilation_cache_dir (tests of that
# setting remove it from their commands' environment). A size limit turns
# on JAX's file lock around the cache's reads and writes: without it, a
# process could read an entry another is still writing, and warn.
_SESSION_CACHE = "BAN_JAX_TEST_XLA_CACHE"
if not os.environ.get(_SESSION_CACHE):
  os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="ban_jax_test_xla_")
  atexit.register(shutil.rmtree, os.environ[_SESSION_CACHE],
                  ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_SESSION_CACHE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(64 * 2**30)


def _skip_cache_eviction() -> None:
  """No eviction scans in this process's compilation cache.

  With a size limit, JAX's cache looks at every entry of the folder on
  every write, to evict the least recently used: over a session of ~1,700
  writes into one growing folder, that took 46 CPU seconds of pytest's
  workers (py-spy). The folder is new each session and never nears its
  limit, set only for the lock: the scan is skipped (JAX's private
  `LRUCache._evict_if_needed`; if it is renamed, the suite is only slower).
  The commands the tests start still scan, each for its few writes.
  """
  # pylint: disable=g-import-not-at-top
  from jax._src import lru_cache
  if hasattr(lru_cache.LRUCache, "_evict_if_needed"):
    lru_cache.LRUCache._evict_if_needed = (  # pylint: disable=protected-access
        lambda self, *, additional_size=0: None)


_skip_cache_eviction()

_ROOT = pathlib.Path(__file__).resolve().parent.parent
# This checkout's root first, so that `configs.digits` is this checkout's
# (the installed package may point at another one).
sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import pytest

from configs import digits
# pylint: enable=g-import-not-at-top,wrong-import-position


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "few_steps: its programs run a step or two, so XLA compiles "
      "them without most optimisations (conftest._unoptimised_xla)")


@contextlib.contextmanager
def _unoptimised_xla():
  """Compiles what runs inside without most of XLA's optimisations.

  Unoptimised code compiles in a third to a half of the time (a
  DenseNet-16's forward pass: 1.7 s instead of 4.7 s) and runs slower.
  That pays where a program runs once or a few times: unit tests of
  models, losses and sharding, and chains of networks no other test
  compiles (a DenseNet teacher, say). It costs where a small network
  trains for a while from the shared cache, so those stay optimised
  (measured per test on this suite). The HLO, what is computed and
  fused, is the same: the tests check numbers, not speed, but the last
  bits of a result can differ. So no program crosses the boundary: a
  jitted function keeps the executable it compiled first whatever the
  setting is later (it is not part of jit's cache key), so JAX's
  in-memory caches are cleared on the way in and out. The persistent
  cache's keys include the setting. Without that, a chain would evaluate
  with whichever executable an earlier test left, and a command rerun on
  its workdir would find other numbers.
  """
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.clear_caches()
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", before)


def _unoptimised_if(marked: bool):
  """The body of the two fixtures below: yields, unoptimised if marked."""
  if marked:
    with _unoptimised_xla():
      yield
  else:
    yield


@pytest.fixture(scope="module", autouse=True)
def _few_steps_module(request):
  """`unoptimised_xla` for a module marked `few_steps` (pytestmark):
  module-scoped, so it comes before the module's other fixtures."""
  yield from _unoptimised_if(
      request.node.get_closest_marker("few_steps") is not None)


@pytest.fixture(scope="session", name="unoptimised_xla")
def _unoptimised_xla_fixture():
  """`with unoptimised_xla(): ...`, for a fixture that compiles a chain of
  networks no other test compiles."""
  return _unoptimised_xla


@pytest.fixture(autouse=True)
def _few_steps_test(request):
  """`unoptimised_xla` for a test marked `few_steps` itself (its module's
  mark is `_few_steps_module`'s: entering again would clear the caches
  between the module's tests)."""
  yield from _unoptimised_if(
      any(mark.name == "few_steps" for mark in request.node.own_markers))


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  """The repository's root folder (commands run from it find configs/)."""
  return _ROOT


@pytest.fixture(scope="session")
def session_xla_cache() -> pathlib.Path:
  """The session's compilation cache, for the commands a test starts with
  config.compilation_cache_dir (test_faults, test_workdir_lock).

  Their programs, compiled with one CPU device, never match this process's
  (eight devices: the cache keys' topology and compile options differ), but
  they match each other's and those of the other one-device commands (the
  read-only rerun in test_pipeline): a chain's programs compile once.
  """
  return pathlib.Path(os.environ[_SESSION_CACHE])


def _tiny_digits_config(num_generations: int = 2, num_epochs: int = 2,
                        lr_decay_epochs: tuple[int, ...] = (1,)):
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.num_generations = num_generations
  config.num_epochs = num_epochs
  config.optim.lr_decay_epochs = lr_decay_epochs
  return config


@pytest.fixture(scope="session")
def tiny_digits_config():
  """Makes digits configs of the smallest network (WRN-10-1) and chain.

  Call it as `tiny_digits_config(num_generations=2, num_epochs=2,
  lr_decay_epochs=(1,))`: each call returns a new config to change.
  """
  return _tiny_digits_config
