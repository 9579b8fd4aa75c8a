"""Reads the official CIFAR python archives, the tar or its extracted folder.

The tar is read in one pass straight from the gzip stream, nothing written
to disk; each file is unpickled with `unpickler.restricted_load`, then
checked and turned into uint8 NHWC images and int32 labels.
"""

import dataclasses
import os
import tarfile
from typing import Any

import numpy as np

from ban_jax.data.cifar.specs import CIFAR_URL, IMAGE_SHAPE, Spec, Split
from ban_jax.data.cifar.unpickler import restricted_load
from ban_jax.errors import DataNotFoundError
from ban_jax.errors import UnreadableDataError


@dataclasses.dataclass(frozen=True)
class Archive:
  path: str
  is_tar: bool  # Else `path` is the extracted folder.


def find(spec: Spec, archive_path) -> tuple[Archive | None, list[str]]:
  """Finds the tar or the extracted folder; also returns where it looked."""
  path = os.path.abspath(os.path.expanduser(os.fspath(archive_path)))
  if os.path.isfile(path):
    return Archive(path, is_tar=True), [path]
  looked = [path]
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, spec.meta_file)):
      return Archive(path, is_tar=False), looked
    candidates = [(os.path.join(path, spec.folder), False),
                  (os.path.join(path, spec.archive_name), True)]
    for candidate, is_tar in candidates:
      looked.append(candidate)
      if is_tar and os.path.isfile(candidate):
        return Archive(candidate, is_tar=True), looked
      if not is_tar and os.path.isfile(os.path.join(candidate,
                                                    spec.meta_file)):
        return Archive(candidate, is_tar=False), looked
  return None, looked


def load(spec: Spec, archive: Archive) -> dict[str, Split]:
  """Both splits of one archive: {'train'|'test': (images, labels)}."""
  wanted = spec.train_files + spec.test_files
  if archive.is_tar:
    files = _read_tar(spec, archive.path, wanted)
  else:
    files = _read_folder(spec, archive.path, wanted)
  splits = {}
  for split, file_names in (("train", spec.train_files),
                            ("test", spec.test_files)):
    parts = [_batch_arrays(spec, files[f], _where(archive, spec, f))
             for f in file_names]
    splits[split] = (np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]))
  return splits


def _where(archive, spec, file_name) -> str:
  if archive.is_tar:
    return f"{archive.path}:{spec.folder}/{file_name}"
  return os.path.join(archive.path, file_name)


def _read_folder(spec, folder, wanted) -> dict[str, Any]:
  """Unpickles the wanted files of the extracted folder."""
  files = {}
  for file_name in wanted:
    file_path = os.path.join(folder, file_name)
    if not os.path.isfile(file_path):
      raise DataNotFoundError(
          f"{file_path} is missing: {folder} does not look like the "
          f"extracted {spec.title} folder ({spec.folder}). Download "
          f"{spec.archive_name} again from {CIFAR_URL}.")
    with open(file_path, "rb") as f:
      files[file_name] = restricted_load(f, file_path)
  return files


def _read_tar(spec, tar_path, wanted) -> dict[str, Any]:
  """Unpickles the wanted members straight from the tar, in one pass."""
  members = {f"{spec.folder}/{f}": f for f in wanted}
  files = {}
  try:
    # 'r:*' also takes an uncompressed .tar; iterating reads the gzip stream
    # once, in order, and nothing is written to disk.
    with tarfile.open(tar_path, "r:*") as tar:
      for member in tar:
        name = os.path.normpath(member.name)
        if name in members and member.isfile():
          where = f"{tar_path}:{member.name}"
          files[members[name]] = restricted_load(tar.extractfile(member),
                                                 where)
  except (tarfile.TarError, EOFError, OSError) as e:
    reason = " ".join(str(e).split())  # tarfile's own text has newlines.
    raise UnreadableDataError(
        f"Could not read {tar_path} as a tar archive ({reason}). Download "
        f"{spec.archive_name} again from {CIFAR_URL}.") from e
  missing = [m for m, f in members.items() if f not in files]
  if missing:
    raise UnreadableDataError(
        f"{tar_path} has no {', '.join(missing)}: is it the {spec.title} "
        f"python archive ({spec.archive_name} from {CIFAR_URL})?")
  return files


def _batch_arrays(spec, batch, where) -> Split:
  """One unpickled batch dict -> uint8 NHWC images and int32 labels."""
  if not isinstance(batch, dict) or b"data" not in batch or (
      spec.label_key not in batch):
    raise UnreadableDataError(
        f"{where} is not a {spec.title} batch: expected a dict with keys "
        f"b'data' and {spec.label_key!r}.")
  data = batch[b"data"]
  size = int(np.prod(IMAGE_SHAPE))
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or
      data.ndim != 2 or data.shape[1] != size):
    raise UnreadableDataError(
        f"{where}: b'data' should be a uint8 array of shape (N, {size}), got "
        f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}.")
  labels = np.asarray(batch[spec.label_key])
  if (labels.shape != (len(data),) or labels.dtype.kind not in "iu" or
      (labels.size and (labels.min() < 0 or
                        labels.max() >= spec.num_classes))):
    raise UnreadableDataError(
        f"{where}: {spec.label_key!r} should be {len(data)} integers in "
        f"[0, {spec.num_classes}).")
  # Rows are stored channel-major (all red, then green, then blue, each 32x32
  # row-major); the models take NHWC.
  height, width, channels = IMAGE_SHAPE
  images = data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)
