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

# configs/ is not a package: make `configs.digits` importable in tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
