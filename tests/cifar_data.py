"""CIFAR test data: archives written in the official format, and configs.

The real archives come from Python 2 and cannot be downloaded here; these
writers produce files with the same layout (pickled batch dicts with
channel-major rows) for the CIFAR tests to read.
"""

import io
import pickle
import struct
import tarfile

import ml_collections
import numpy as np

from ban_jax import config_schema


class Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes what Python 2's cPickle wrote: str opcodes, numpy.core names.

  The real files come from Python 2, where bytes were `str`: they hold
  (SHORT_)BINSTRING opcodes and name `numpy.core.multiarray._reconstruct`.
  Python 3 writes `_codecs.encode` calls and `numpy._core` instead; the
  loader must take both.
  """
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_bytes(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  def save_str(self, obj):
    self.save_bytes(obj.encode("latin1"))

  def save_global(self, obj, name=None):
    module = obj.__module__.replace("numpy._core", "numpy.core")
    name = name or obj.__qualname__
    self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
    self.memoize(obj)

  dispatch[bytes] = save_bytes
  dispatch[str] = save_str
  dispatch[type] = save_global
  dispatch[type(len)] = save_global


def py2_dumps(obj) -> bytes:
  """Pickles as the real (Python 2) CIFAR files are pickled."""
  f = io.BytesIO()
  Py2Pickler(f, protocol=2).dump(obj)
  return f.getvalue()


def py3_dumps(obj) -> bytes:
  """Pickles as Python 3 writes protocol 2 (bytes via `_codecs.encode`)."""
  return pickle.dumps(obj, protocol=2)


def chw_rows(n, seed):
  """(n, 3072) uint8 rows; row 0 is zero except pixel (1, 2) = (10, 20, 30)."""
  data = np.random.default_rng(seed).integers(0, 256, (n, 3072), np.uint8)
  data[0] = 0
  # Channel-major: channel c, row r, column x sits at c*1024 + r*32 + x.
  data[0, 0 * 1024 + 1 * 32 + 2] = 10
  data[0, 1 * 1024 + 1 * 32 + 2] = 20
  data[0, 2 * 1024 + 1 * 32 + 2] = 30
  return data


def cifar_files(name, dumps, n_per_batch=3, n_test=4):
  """{file name: pickle bytes} and the expected arrays for one archive."""
  files, expect = {}, {}
  if name == "cifar10":
    train_rows, train_labels = [], []
    for i in range(1, 6):
      rows = chw_rows(n_per_batch, seed=i)
      labels = [(3 * i + j) % 10 for j in range(n_per_batch)]
      files[f"data_batch_{i}"] = dumps({
          b"batch_label": f"training batch {i} of 5".encode(),
          b"labels": labels, b"data": rows,
          b"filenames": [f"img_{i}_{j}.png".encode()
                         for j in range(n_per_batch)]})
      train_rows.append(rows)
      train_labels += labels
    test_rows = chw_rows(n_test, seed=9)
    test_labels = [9 - j for j in range(n_test)]
    files["test_batch"] = dumps({
        b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
        b"data": test_rows,
        b"filenames": [f"t_{j}.png".encode() for j in range(n_test)]})
    names = [f"class{i}" for i in range(10)]
    files["batches.meta"] = dumps({
        b"num_cases_per_batch": 10000, b"num_vis": 3072,
        b"label_names": [n.encode() for n in names]})
  else:
    train_rows = [chw_rows(5 * n_per_batch, seed=1)]
    train_labels = [(7 * j) % 100 for j in range(5 * n_per_batch)]
    test_rows = chw_rows(n_test, seed=9)
    test_labels = [99 - j for j in range(n_test)]
    for file_name, rows, labels in (("train", train_rows[0], train_labels),
                                    ("test", test_rows, test_labels)):
      files[file_name] = dumps({
          b"filenames": [b"x.png"] * len(rows), b"batch_label": b"batch",
          b"fine_labels": labels, b"coarse_labels": [l // 5 for l in labels],
          b"data": rows})
    names = [f"fine{i}" for i in range(100)]
    files["meta"] = dumps({
        b"fine_label_names": [n.encode() for n in names],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
  expect["train_rows"] = np.concatenate(train_rows)
  expect["train_labels"] = np.array(train_labels)
  expect["test_rows"] = test_rows
  expect["test_labels"] = np.array(test_labels)
  return files, expect


FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
TAR = {"cifar10": "cifar-10-python.tar.gz",
       "cifar100": "cifar-100-python.tar.gz"}


def write_tar(path, folder, files):
  """Writes `files` ({name: bytes}) into `folder/` of a .tar.gz at `path`."""
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(folder)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
    for file_name, payload in files.items():
      info = tarfile.TarInfo(f"{folder}/{file_name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return str(path)


def config(**kwargs):
  """configs/default.py's `config.data`, with these fields set."""
  return ml_collections.ConfigDict(
      {**config_schema.defaults().data.to_dict(), **kwargs})
