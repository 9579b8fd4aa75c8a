"""Whether the accelerator that JAX_PLATFORMS asks for is here.

With `JAX_PLATFORMS=cuda` on a machine without a usable GPU, the first call
that touches JAX's backend fails with a bare AssertionError; with `gpu` the
message is about ROCm, with `tpu` about libtpu.so. `check_backend` turns
that into one sentence: which platform was asked for, which ones JAX has
here, and how to install the missing one (or to unset JAX_PLATFORMS).
"""

import importlib.metadata
import importlib.util
import os
import pkgutil

import jax

from ban_jax import errors
from ban_jax.runtime import short_errors

_WHAT = {"cuda": "an NVIDIA GPU (CUDA)", "gpu": "a GPU", "rocm":
         "an AMD GPU (ROCm)", "tpu": "a TPU", "cpu": "the CPU"}
_INSTALL = {
    "cuda": 'pip install -U "jax[cuda12]" (on a machine with an NVIDIA GPU '
            "and its driver)",
    "rocm": "the ROCm plugin (https://docs.jax.dev/en/latest/"
            "installation.html)",
    "tpu": 'pip install -U "jax[tpu]" (on a Cloud TPU VM)',
}
_INSTALL["gpu"] = _INSTALL["cuda"]


class BackendUnavailableError(errors.UserError):
  """JAX cannot start the platform it was asked for; the message says why."""


def installed_platforms() -> list[str]:
  """The platforms JAX has plugins for here ('cpu' is built in)."""
  names = {entry.name for entry in
           importlib.metadata.entry_points(group="jax_plugins")}
  # Plugins also come as modules of the namespace package jax_plugins.
  namespace = importlib.util.find_spec("jax_plugins")
  if namespace is not None and namespace.submodule_search_locations:
    names |= {name for _, name, _ in pkgutil.iter_modules(
        namespace.submodule_search_locations)}
  found = ["cpu"]
  for platform in ("cuda", "rocm"):
    if any(platform in name for name in names):
      found.append(platform)
  if importlib.util.find_spec("libtpu") is not None:
    found.append("tpu")
  return found


def _has_plugin(platform: str, installed: list[str]) -> bool:
  if platform == "gpu":
    return "cuda" in installed or "rocm" in installed
  return platform in installed or platform not in _INSTALL


def unavailable_message(requested: str, error: BaseException,
                        installed: list[str]) -> str:
  """One line on why `requested` (JAX_PLATFORMS' value) did not start."""
  asked = [p.strip() for p in requested.split(",") if p.strip()]
  setting = ("JAX_PLATFORMS" if os.environ.get("JAX_PLATFORMS")
             else "jax_platforms")
  what = " or ".join(_WHAT.get(p, repr(p)) for p in asked)
  here = ", ".join(installed)
  missing = [p for p in asked if not _has_plugin(p, installed)]
  if missing:
    return (f"{setting}={requested!r} asks for {what}, but JAX here has no "
            f"plugin for {missing[0]} (it has: {here}). Install it with "
            f"{_INSTALL[missing[0]]}, or unset {setting} to run on what is "
            "here.")
  reason = short_errors.one_line(str(error) or type(error).__name__)
  return (f"{setting}={requested!r} asks for {what}, which JAX cannot start "
          f"here ({reason}). Check that the device and its driver are "
          f"visible to this process, or unset {setting} to run on what is "
          f"here ({here}).")


def check_backend() -> None:
  """Starts JAX's backend; raises BackendUnavailableError if it cannot."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    requested = jax.config.jax_platforms or ""
    if not requested:
      raise  # JAX chose the platform itself: not a setting to fix.
    raise BackendUnavailableError(
        unavailable_message(requested, e, installed_platforms())) from None
