"""An unpickler for the CIFAR archive files that can only build numpy arrays.

The official CIFAR files are Python pickles, and unpickling runs whatever
callables a pickle names. This unpickler resolves only the few globals a
CIFAR file needs, so a tampered file is refused before any of it runs.
"""

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from ban_jax.data.cifar.specs import CIFAR_URL
from ban_jax.errors import UnreadableDataError
from ban_jax.errors import UnsafePickleError


class _ForbiddenCall(Exception):
  """Raised by an allowed global called in a way no CIFAR file calls it."""


def _latin1_encode(text, encoding="latin1", errors="strict"):
  """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes."""
  # Only the latin-1 round trip that pickle itself writes; any other codec
  # in a CIFAR file would be a sign of tampering.
  if codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
    raise _ForbiddenCall(
        f"it calls _codecs.encode with encoding={encoding!r}, "
        f"errors={errors!r}, where a CIFAR file only ever has 'latin1'")
  return codecs.encode(text, "latin1")


def _reconstruct():
  # numpy 2 moved numpy.core to numpy._core; the real (Python 2) files name
  # numpy.core, pickles written today name numpy._core. Both map here
  # without importing the deprecated module.
  core = getattr(np, "_core", None) or np.core  # pylint: disable=no-member
  return core.multiarray._reconstruct  # pylint: disable=protected-access


# Everything a CIFAR pickle may name: what numpy needs to rebuild a uint8
# array, and what Python 3 writes for bytes in protocol 2.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS`; any other global is an error."""

  def __init__(self, file: BinaryIO, where: str):
    # The files were pickled by Python 2: its `str` comes back as bytes.
    super().__init__(file, encoding="bytes")
    self._where = where

  def find_class(self, module, name):
    # Every route to a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*)
    # passes through here, so refusing here means nothing else can run.
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
      raise UnsafePickleError(
          f"Refusing to unpickle {self._where}: it asks for the Python "
          f"global '{module}.{name}', but a CIFAR file only needs numpy "
          f"arrays (allowed: {allowed}). The file is corrupt or has been "
          "tampered with; nothing in it was run. Download the archive again "
          f"from {CIFAR_URL}.") from None

  def persistent_load(self, pid):
    raise UnsafePickleError(f"Refusing to unpickle {self._where}: it uses "
                            "persistent ids, which a CIFAR file never has.")


def restricted_load(file: BinaryIO | bytes, where: str) -> Any:
  """Unpickles a CIFAR file, allowing only numpy arrays and bytes.

  Args:
    file: a binary file object, or the file's bytes.
    where: names the file in error messages.

  Returns:
    The unpickled object (for CIFAR, a dict with bytes keys).

  Raises:
    UnsafePickleError: the pickle asks for any other Python global.
    UnreadableDataError: the file is not a readable pickle.
  """
  if isinstance(file, (bytes, bytearray)):
    file = io.BytesIO(file)
  try:
    return _RestrictedUnpickler(file, where).load()
  except UnsafePickleError:
    raise
  except _ForbiddenCall as e:
    raise UnsafePickleError(f"Refusing to unpickle {where}: {e}. The file is "
                            "corrupt or has been tampered with. Download the "
                            f"archive again from {CIFAR_URL}.") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise UnreadableDataError(
        f"Could not unpickle {where}: {type(e).__name__}: {e}. Download the "
        f"archive again from {CIFAR_URL}.") from e
