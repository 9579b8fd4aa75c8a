"""Test set-up and shared fixtures.

Eight virtual CPU devices, so multi-device paths run here, and XLA code
compiled without LLVM's optimisations: the flags must be set before JAX
initialises its backends, i.e. before any test module imports jax. Fixtures: `repo_root`, and `tiny_digits_config` for end-to-end
runs on the digits.
"""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# Most of the suite's time is XLA compiling tiny programs that then run a
# few steps. Without LLVM's optimisations they compile in about two thirds
# of the CPU time; the HLO (what is computed, fused and in which order) is
# the same, and the tests check numbers, not speed. Commands the tests
# start inherit the flag (those that set XLA_FLAGS themselves add it).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_ROOT = pathlib.Path(__file__).resolve().parent.parent
# This checkout's root first, so that `configs.digits` is this checkout's
# (the installed package may point at another one).
sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import atexit
import shutil
import tempfile

import jax
import pytest

from configs import digits
# pylint: enable=g-import-not-at-top,wrong-import-position

# Many tests build the same small networks again (every pipeline.run makes
# new trainers); a persistent compilation cache for the session turns those
# recompiles into cache hits. Same HLO, same executable: results unchanged.
# The folder goes when the session ends, or every test run would leave one
# behind in /tmp.
_XLA_CACHE_DIR = tempfile.mkdtemp(prefix="ban_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
