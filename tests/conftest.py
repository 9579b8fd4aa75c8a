"""Test set-up and shared fixtures.

Eight virtual CPU devices, so multi-device paths run here, XLA code
compiled without LLVM's optimisations, and one compilation cache for the
whole session: all must be set before JAX initialises, i.e. before any
test module imports jax. Fixtures: `repo_root`, and `tiny_digits_config`
for end-to-end runs on the digits.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# Most of the suite's time is XLA compiling tiny programs that then run a
# few steps. Without LLVM's optimisations they compile in about a third of
# the time (measured: a WRN-10-1's init, 2.3 s instead of 8.4 s) and run
# slower; the HLO (what is computed, fused and in which order) is the
# same, and the tests check numbers, not speed. Commands the tests start
# inherit the flag (those that set XLA_FLAGS themselves add it).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Much of the rest is compiling the same small networks again:
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

_ROOT = pathlib.Path(__file__).resolve().parent.parent
# This checkout's root first, so that `configs.digits` is this checkout's
# (the installed package may point at another one).
sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import pytest

from configs import digits
# pylint: enable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  """The repository's root folder (commands run from it find configs/)."""
  return _ROOT


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
