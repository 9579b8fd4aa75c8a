"""data/cifar/unpickler.py: CIFAR pickles may only build numpy arrays."""

import os
import pickle

import numpy as np
import pytest

from ban_jax import errors
from ban_jax.data import cifar
from ban_jax.data.cifar import unpickler
from tests.cifar_data import FOLDER as _FOLDER
from tests.cifar_data import TAR as _TAR
from tests.cifar_data import cifar_files as _cifar_files
from tests.cifar_data import config as _config
from tests.cifar_data import py3_dumps as _py3_dumps
from tests.cifar_data import write_tar as _write_tar


class _SystemPayload:

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class _OpenPayload:

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["os_system", "open"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
  sentinel = tmp_path / "SENTINEL"
  if kind == "os_system":
    # Protocol 2, as the real files: the GLOBAL opcode.
    payload, protocol, forbidden = (_SystemPayload(f"touch {sentinel}"), 2,
                                    f"{os.system.__module__}.system")
  else:
    # Protocol 4: the STACK_GLOBAL opcode must be caught as well.
    payload, protocol, forbidden = (_OpenPayload(str(sentinel)), 4,
                                    f"{open.__module__}.open")  # io.open
  evil = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=protocol)
  # The payload is live: a plain unpickler runs it.
  pickle.loads(evil)
  assert sentinel.exists()
  sentinel.unlink()

  files, _ = _cifar_files("cifar10", _py3_dumps)
  files["data_batch_1"] = evil
  path = _write_tar(tmp_path / _TAR["cifar10"], _FOLDER["cifar10"], files)
  with pytest.raises(errors.UnsafePickleError) as err:
    cifar.load("cifar10", _config(archive_path=path))
  message = str(err.value)
  assert "cifar-10-batches-py/data_batch_1" in message
  assert f"'{forbidden}'" in message
  assert "nothing in it was run" in message
  assert not sentinel.exists()


def test_codecs_encode_is_only_latin1(tmp_path):
  # `_codecs.encode` is allowed because Python 3 writes bytes with it; any
  # codec but latin-1 is refused.
  class Rot13:

    def __reduce__(self):
      import _codecs  # pylint: disable=g-import-not-at-top
      return (_codecs.encode, ("abc", "rot13"))

  with pytest.raises(errors.UnsafePickleError,
                     match="unpickle some/file: .*encoding='rot13'"):
    unpickler.restricted_load(pickle.dumps(Rot13(), protocol=2), "some/file")
  assert unpickler.restricted_load(pickle.dumps(b"\xff\x00", protocol=2),
                                   "where") == b"\xff\x00"


def test_truncated_pickle_is_a_clear_error():
  blob = _py3_dumps({b"data": np.zeros((2, 3072), np.uint8)})
  with pytest.raises(ValueError, match="Could not unpickle somefile"):
    unpickler.restricted_load(blob[:100], "somefile")
