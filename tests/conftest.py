"""Test set-up: eight virtual CPU devices, so multi-device paths run here.

The flag must be set before JAX initialises its backends, i.e. before any
test module imports jax.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# This checkout's root first, so that `configs.digits` is this checkout's
# (the installed package may point at another one).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Many tests build the same small networks again (every pipeline.run makes
# new trainers); a persistent compilation cache for the session turns those
# recompiles into cache hits. Same HLO, same executable: results unchanged.
# The folder goes when the session ends, or every test run would leave one
# behind in /tmp.
import atexit  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

_XLA_CACHE_DIR = tempfile.mkdtemp(prefix="ban_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
