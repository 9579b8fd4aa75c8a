"""CIFAR-10 and CIFAR-100, from TFDS or from the official archives.

Two sources give the same `Dataset` (uint8 NHWC images, int32 labels):

* TFDS (`cifar10`, `cifar100`) prepared in the `array_record` format, read
  without TensorFlow through TFDS's random-access data source (what
  `tfds.data_source` returns). Preparing needs TensorFlow and internet,
  once:

      pip install -e '.[prepare]'
      tfds build cifar100 --file_format=array_record --data_dir=DIR

  A dataset prepared in TFDS's default `tfrecord` format is read through
  `tfds.load` when TensorFlow is installed; otherwise the error says how to
  rebuild it.
* The official Toronto archives (`cifar-10-python.tar.gz`,
  `cifar-100-python.tar.gz`, https://www.cs.toronto.edu/~kriz/cifar.html),
  read straight from the tar (or from the extracted folder), no network. The
  files are Python pickles, so they are read with an unpickler that can only
  build numpy arrays: an archive that asks for anything else is refused
  before any of it runs.

Config fields (`config.data`, all optional except `name`):

* `source`: 'auto' (the archive if `archive_path` is set and the archive
  is there, else TFDS), 'tfds' or 'archive'.
* `data_dir`: the TFDS data dir; None means `$TFDS_DATA_DIR`, else TFDS's
  default `~/tensorflow_datasets`.
* `archive_path`: the .tar.gz, a directory holding it, its extracted folder
  (`cifar-10-batches-py` / `cifar-100-python`), or a directory holding that.

Several hosts: each host keeps only its shard of the train split, the
contiguous block `[i * k, (i + 1) * k)` with `k = n // process_count` (the
last `n % process_count` examples are dropped so that every host runs the
same number of steps). From TFDS a host reads only its block's records;
from an archive it reads the whole tar (gzip reads in order) and keeps its
block. Every host keeps the whole test split, so each can
evaluate on all of it. The mean/std are those of the loaded train
examples; in a multi-process run (`jax.process_count() > 1`) the hosts'
stats are combined, so every host normalises with the same constants, those
of the train split as a whole.
"""

import codecs
import contextlib
import dataclasses
import glob
import io
import os
import pickle
import tarfile
import tempfile
from typing import Any, BinaryIO, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from ban_jax.data import DATA_SOURCES, Dataset, channel_stats

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (32, 32, 3)
# Examples per `__getitems__` call when reading a TFDS data source: big
# enough that array_record reads in bulk, small enough to bound the list of
# decoded dicts held at once.
_TFDS_CHUNK = 2048

_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                  "frog", "horse", "ship", "truck")
_CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree",
    "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper",
    "table", "tank", "telephone", "television", "tiger", "tractor", "train",
    "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Where one CIFAR variant keeps what, in TFDS and in the archive."""
  name: str
  title: str
  num_classes: int
  label_names: tuple[str, ...]
  archive_name: str
  folder: str
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  meta_file: str
  label_key: bytes
  names_key: bytes


_SPECS = {
    "cifar10": _Spec(
        name="cifar10", title="CIFAR-10", num_classes=10,
        label_names=_CIFAR10_NAMES,
        archive_name="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",), meta_file="batches.meta",
        label_key=b"labels", names_key=b"label_names"),
    "cifar100": _Spec(
        name="cifar100", title="CIFAR-100", num_classes=100,
        label_names=_CIFAR100_NAMES,
        archive_name="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), meta_file="meta",
        # The paper's CIFAR-100 numbers are on the 100 fine classes.
        label_key=b"fine_labels", names_key=b"fine_label_names"),
}


class DataNotFoundError(FileNotFoundError):
  """The dataset is in none of the places the config points at."""


class UnsafePickleError(pickle.UnpicklingError):
  """A CIFAR pickle asked for something other than numpy arrays."""


class UnreadableDataError(ValueError):
  """The data is there but cannot be read (a damaged or wrong archive, a
  TFDS format that needs TensorFlow); the message says how to fix it."""


class _ForbiddenCall(Exception):
  """Raised by an allowed global called in a way no CIFAR file calls it."""


def load(name: str, data_config, *, process_index: int | None = None,
         process_count: int | None = None) -> Dataset:
  """Loads CIFAR-10 or CIFAR-100 into host memory.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_config: `config.data`; reads `source`, `data_dir`, `archive_path`.
    process_index: this host's index; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.

  Returns:
    The `Dataset`, with this host's shard of the train split and all of the
    test split (see the module docstring).

  Raises:
    DataNotFoundError: neither source has the data; the message says where
      it looked and how to get the data there.
    UnsafePickleError: an archive file asks the unpickler for anything but
      numpy arrays.
    UnreadableDataError: the data found cannot be read; the message says
      how to get a readable copy.
  """
  if name not in _SPECS:
    raise ValueError(f"Unknown CIFAR variant {name!r}; expected one of "
                     f"{', '.join(_SPECS)}.")
  spec = _SPECS[name]
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count}).")

  source = data_config.get("source", "auto") or "auto"
  if source not in DATA_SOURCES:
    raise ValueError(f"config.data.source={source!r}; expected one of "
                     f"{', '.join(DATA_SOURCES)}.")
  archive_path = data_config.get("archive_path", None)
  # A smoke run's cap applies to the whole split, before it is divided
  # between the hosts, so that N hosts train on the same examples as one.
  train_cap = data_config.get("max_train_examples", 0) or None
  data_dir, data_dir_origin = resolve_data_dir(data_config.get("data_dir",
                                                               None))
  archive, looked = (_find_archive(spec, archive_path) if archive_path
                     else (None, []))

  if source == "archive" or (source == "auto" and archive is not None):
    if archive is None:
      raise _not_found(spec, source, archive_path, looked, data_dir,
                       data_dir_origin, tfds_dataset_dir=None)
    logging.info("Loading %s from %s.", spec.title, archive.path)
    splits, label_names = _load_archive(spec, archive)
    start, stop = host_shard(_capped(len(splits["train"][1]), train_cap),
                             process_index, process_count)
    # A copy, so that the rest of the split can be freed.
    train_x, train_y = (a[start:stop].copy() if stop - start < len(a) else a
                        for a in splits["train"])
    test_x, test_y = splits["test"]
  else:
    logging.info("Loading %s from TFDS data_dir=%s (%s).", spec.title,
                 data_dir, data_dir_origin)
    (train_x, train_y, test_x, test_y, label_names) = _load_tfds(
        spec, data_dir, process_index, process_count, train_cap,
        not_found=lambda dataset_dir: _unreadable_data_dir(
            spec, data_dir, data_dir_origin, dataset_dir) or _not_found(
                spec, source, archive_path, looked, data_dir, data_dir_origin,
                tfds_dataset_dir=dataset_dir))

  mean, std = channel_stats(train_x)
  if jax.process_count() > 1 and process_count == jax.process_count():
    mean, std = _global_channel_stats(len(train_x), mean, std)
  return Dataset(
      name=name,
      train_images=train_x, train_labels=train_y,
      test_images=test_x, test_labels=test_y,
      num_classes=spec.num_classes, label_names=tuple(label_names),
      mean=mean, std=std)


def resolve_data_dir(data_dir: str | None) -> tuple[str, str]:
  """The TFDS data dir to use, and which setting chose it (for messages)."""
  if data_dir:
    origin = "config.data.data_dir"
  elif os.environ.get("TFDS_DATA_DIR"):
    # Read at call time: TFDS reads it once, when it is imported.
    data_dir, origin = os.environ["TFDS_DATA_DIR"], "$TFDS_DATA_DIR"
  else:
    data_dir, origin = "~/tensorflow_datasets", "the TFDS default"
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if "://" not in data_dir:  # Leave gs:// and other remote paths as they are.
    data_dir = os.path.abspath(data_dir)
  return data_dir, origin


def host_shard(num_examples: int, process_index: int,
               process_count: int) -> tuple[int, int]:
  """[start, stop) of this host's equal, contiguous share of the examples."""
  per_host = num_examples // process_count
  return process_index * per_host, (process_index + 1) * per_host


def combine_channel_stats(counts: Sequence[int], means: np.ndarray,
                          stds: np.ndarray) -> tuple[tuple[float, ...],
                                                     tuple[float, ...]]:
  """Mean/std of the union of shards from each shard's count, mean and std.

  Args:
    counts: (S,) examples per shard (any positive weights work).
    means: (S, C) per-shard channel means.
    stds: (S, C) per-shard channel standard deviations.

  Returns:
    The channel mean and std over all shards together.
  """
  counts = np.asarray(counts, np.float64)[:, None]
  means = np.asarray(means, np.float64)
  stds = np.asarray(stds, np.float64)
  mean = (counts * means).sum(0) / counts.sum()
  # Total variance = mean within-shard variance + variance of shard means.
  var = (counts * (stds**2 + (means - mean)**2)).sum(0) / counts.sum()
  return tuple(mean.tolist()), tuple(np.sqrt(var).tolist())


def _global_channel_stats(count, mean, std):
  """Combines each host's stats so every host normalises the same way."""
  local = np.concatenate([[count], mean, std]).astype(np.float32)
  gathered = np.asarray(multihost_utils.process_allgather(local),
                        np.float64).reshape(-1, local.size)
  channels = len(mean)
  return combine_channel_stats(gathered[:, 0], gathered[:, 1:1 + channels],
                               gathered[:, 1 + channels:])


# ---------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _no_tfds_temp_leftovers():
  """Removes the empty temp folder tfds.builder leaves for each unprepared
  dataset (made to fetch metadata from GCS, then left when there is none)."""
  pattern = os.path.join(tempfile.gettempdir(), "tmp*tfds")
  before = set(glob.glob(pattern))
  try:
    yield
  finally:
    for path in set(glob.glob(pattern)) - before:
      try:
        os.rmdir(path)  # Only if empty: never anything with files in it.
      except OSError:
        pass


def _capped(num_examples: int, cap: int | None) -> int:
  return min(num_examples, cap) if cap else num_examples


def _load_tfds(spec, data_dir, process_index, process_count, train_cap,
               not_found):
  """Reads both splits of a prepared TFDS dataset into numpy arrays."""
  with _no_tfds_temp_leftovers():
    builder = tfds.builder(spec.name, data_dir=data_dir)
  try:
    sources = {split: builder.as_data_source(split=split)
               for split in ("train", "test")}
  except Exception as e:  # pylint: disable=broad-except
    # TFDS's own errors here are misleading (an unprepared dataset reports
    # an unsupported file format), so find out what is really wrong.
    if not builder.is_prepared():
      raise not_found(builder.data_dir) from e
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
      return _load_tfds_with_tensorflow(spec, builder, data_dir,
                                        process_index, process_count,
                                        train_cap, e)
    raise
  start, stop = host_shard(_capped(len(sources["train"]), train_cap),
                           process_index, process_count)
  train_x, train_y = _read_source(sources["train"], start, stop)
  test_x, test_y = _read_source(sources["test"], 0, len(sources["test"]))
  return (train_x, train_y, test_x, test_y,
          _tfds_label_names(spec, builder))


def _read_source(source, start: int, stop: int):
  """Examples [start, stop) of a TFDS data source as uint8 NHWC + int32."""
  images = np.empty((stop - start,) + IMAGE_SHAPE, np.uint8)
  labels = np.empty((stop - start,), np.int32)
  for chunk_start in range(start, stop, _TFDS_CHUNK):
    keys = list(range(chunk_start, min(stop, chunk_start + _TFDS_CHUNK)))
    try:
      examples = source.__getitems__(keys)
    except TypeError:
      # `tfds.testing.mock_data`'s fake source only supports single reads.
      examples = [source[k] for k in keys]
    at = chunk_start - start
    images[at:at + len(keys)] = np.stack([ex["image"] for ex in examples])
    labels[at:at + len(keys)] = [ex["label"] for ex in examples]
  return images, labels


def _tfds_label_names(spec, builder) -> tuple[str, ...]:
  names = tuple(builder.info.features["label"].names)
  # Without its labels file (e.g. under `tfds.testing.mock_data`) TFDS names
  # the classes '0', '1', ...; the real names are fixed, so use them.
  if len(names) != spec.num_classes or names == tuple(
      str(i) for i in range(spec.num_classes)):
    return spec.label_names
  return names


def _load_tfds_with_tensorflow(spec, builder, data_dir, process_index,
                               process_count, train_cap, error):
  """Reads a dataset prepared as tfrecord, which needs TensorFlow."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UnreadableDataError(
        f"TFDS '{spec.name}' in {builder.data_dir} was prepared in the "
        "tfrecord format, which only TensorFlow can read, and TensorFlow is "
        "not installed. Either install it:\n"
        "  pip install -e '.[prepare]'\n"
        "or rebuild the dataset as array_record, which reads without "
        "TensorFlow (on a machine with TensorFlow and internet):\n"
        f"  tfds build {spec.name} --file_format=array_record "
        f"--data_dir={data_dir} --overwrite") from error
  num_train = _capped(builder.info.splits["train"].num_examples, train_cap)
  start, stop = host_shard(num_train, process_index, process_count)
  arrays = {}
  for split in (f"train[{start}:{stop}]", "test"):
    data = tfds.as_numpy(tfds.load(spec.name, split=split, batch_size=-1,
                                   data_dir=data_dir, download=False))
    arrays[split] = (np.asarray(data["image"], np.uint8),
                     np.asarray(data["label"], np.int32))
  (train_x, train_y), (test_x, test_y) = arrays.values()
  return (train_x, train_y, test_x, test_y,
          _tfds_label_names(spec, builder))


# ---------------------------------------------------------------------------
# The official archives.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Archive:
  path: str
  is_tar: bool  # Else `path` is the extracted folder.


def _find_archive(spec, archive_path) -> tuple[_Archive | None, list[str]]:
  """Finds the tar or the extracted folder; also returns where it looked."""
  path = os.path.abspath(os.path.expanduser(os.fspath(archive_path)))
  if os.path.isfile(path):
    return _Archive(path, is_tar=True), [path]
  looked = [path]
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, spec.meta_file)):
      return _Archive(path, is_tar=False), looked
    candidates = [(os.path.join(path, spec.folder), False),
                  (os.path.join(path, spec.archive_name), True)]
    for candidate, is_tar in candidates:
      looked.append(candidate)
      if is_tar and os.path.isfile(candidate):
        return _Archive(candidate, is_tar=True), looked
      if not is_tar and os.path.isfile(os.path.join(candidate,
                                                    spec.meta_file)):
        return _Archive(candidate, is_tar=False), looked
  return None, looked


def _load_archive(spec, archive: _Archive):
  """Reads the train/test batches and the label names of one archive."""
  wanted = spec.train_files + spec.test_files + (spec.meta_file,)
  if archive.is_tar:
    files = _read_tar(spec, archive.path, wanted)
  else:
    files = {}
    for file_name in wanted:
      file_path = os.path.join(archive.path, file_name)
      if not os.path.isfile(file_path):
        raise DataNotFoundError(
            f"{file_path} is missing: {archive.path} does not look like the "
            f"extracted {spec.title} folder ({spec.folder}). Download "
            f"{spec.archive_name} again from {CIFAR_URL}.")
      with open(file_path, "rb") as f:
        files[file_name] = restricted_load(f, file_path)

  splits = {}
  for split, file_names in (("train", spec.train_files),
                            ("test", spec.test_files)):
    parts = [_batch_arrays(spec, files[f], _where(archive, spec, f))
             for f in file_names]
    splits[split] = (np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]))
  label_names = _label_names(spec, files[spec.meta_file],
                             _where(archive, spec, spec.meta_file))
  return splits, label_names


def _where(archive, spec, file_name) -> str:
  if archive.is_tar:
    return f"{archive.path}:{spec.folder}/{file_name}"
  return os.path.join(archive.path, file_name)


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


def _batch_arrays(spec, batch, where) -> tuple[np.ndarray, np.ndarray]:
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


def _label_names(spec, meta, where) -> tuple[str, ...]:
  names = meta.get(spec.names_key) if isinstance(meta, dict) else None
  if not isinstance(names, list) or len(names) != spec.num_classes:
    raise UnreadableDataError(
        f"{where}: expected {spec.num_classes} label names under "
        f"{spec.names_key!r}.")
  return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n)
               for n in names)


# ---------------------------------------------------------------------------
# Restricted unpickling.
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The missing-data error.
# ---------------------------------------------------------------------------


def _unreadable_data_dir(spec, data_dir, data_dir_origin, dataset_dir
                         ) -> UnreadableDataError | None:
  """The error for a data_dir this user cannot read, or None.

  TFDS cannot tell a folder it may not read from a missing one: both look
  unprepared. Walks from data_dir down to the dataset's folder.
  """
  data_dir, dataset_dir = os.fspath(data_dir), os.fspath(dataset_dir)
  if "://" in data_dir or not dataset_dir.startswith(data_dir):
    return None
  path = data_dir
  below = os.path.relpath(dataset_dir, data_dir).split(os.sep)
  for name in [*below, None]:
    try:
      entries = os.listdir(path)
    except PermissionError:
      return UnreadableDataError(
          f"{spec.title}: TFDS data_dir={data_dir} (from {data_dir_origin}) "
          f"cannot be read: permission denied on {path}. Make it readable "
          f"(chmod -R a+rX {path}, or ask its owner), or point "
          "config.data.data_dir at a readable copy.")
    except OSError:
      return None  # Missing, or not a folder: the not-found error says so.
    if name is None or name == "." or name not in entries:
      return None
    path = os.path.join(path, name)
  return None


def _not_found(spec, source, archive_path, looked, data_dir, data_dir_origin,
               tfds_dataset_dir) -> DataNotFoundError:
  """The one error for missing data: where it looked, and what to run."""
  lines = [f"{spec.title} not found (config.data.source={source!r}). "
           "Looked for:"]
  if not archive_path:
    lines.append("  - the official archive: config.data.archive_path is not "
                 "set")
  elif source == "tfds":
    lines.append(f"  - the official archive: not tried (archive_path="
                 f"{archive_path})")
  else:
    lines.append(f"  - the official archive at archive_path={archive_path}: "
                 f"checked {', '.join(looked)}")
  if tfds_dataset_dir is not None:
    lines.append(f"  - TFDS '{spec.name}' in data_dir={data_dir} (from "
                 f"{data_dir_origin}): nothing prepared in "
                 f"{tfds_dataset_dir}")
  else:
    lines.append(f"  - TFDS: not tried (data_dir would be {data_dir}, from "
                 f"{data_dir_origin})")
  lines += [
      "To get the data, either prepare it with TFDS on a machine with "
      "internet (preparing needs TensorFlow; copy the data_dir over "
      "afterwards if this machine is offline):",
      "  pip install -e '.[prepare]'",
      f"  tfds build {spec.name} --file_format=array_record "
      f"--data_dir={data_dir}",
      f"or download {spec.archive_name} (the python version) from "
      f"{CIFAR_URL} and point at it:",
      f"  --config.data.archive_path=/path/to/{spec.archive_name}",
      "(a directory holding the archive or its extracted folder "
      f"{spec.folder} works too).",
  ]
  return DataNotFoundError("\n".join(lines))
