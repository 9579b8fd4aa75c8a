"""Reads a prepared TFDS `cifar10` / `cifar100` into numpy arrays.

The `array_record` format is read without TensorFlow, through TFDS's
random-access data source, and a host reads only its shard's records. A
dataset prepared in TFDS's default `tfrecord` format is read through
`tfds.load` when TensorFlow is installed; otherwise the error says how to
rebuild it.
"""

import contextlib
import glob
import os
import tempfile
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from ban_jax.data.cifar import hosts
from ban_jax.data.cifar.specs import IMAGE_SHAPE, Spec, Split
from ban_jax.errors import DataNotFoundError
from ban_jax.errors import UnreadableDataError

# Examples per `__getitems__` call when reading a TFDS data source: big
# enough that array_record reads in bulk, small enough to bound the list of
# decoded dicts held at once.
_TFDS_CHUNK = 2048


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


def load(spec: Spec, data_dir: str, process_index: int, process_count: int,
         train_cap: int | None,
         not_found: Callable[[str], DataNotFoundError]) -> tuple[Split,
                                                                 Split]:
  """This host's shard of the train split and all of the test split.

  Args:
    spec: the CIFAR variant.
    data_dir: the TFDS data dir (see `resolve_data_dir`).
    process_index: this host's index.
    process_count: number of hosts.
    train_cap: keep only the first examples of the train split, before
      sharding it; None keeps all.
    not_found: makes the error for a dataset not prepared, from the folder
      TFDS looked in.

  Returns:
    (train_images, train_labels), (test_images, test_labels).
  """
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
      return _load_with_tensorflow(spec, builder, data_dir, process_index,
                                   process_count, train_cap, e)
    raise
  start, stop = hosts.host_shard(
      hosts.capped(len(sources["train"]), train_cap), process_index,
      process_count)
  return (_read_source(sources["train"], start, stop),
          _read_source(sources["test"], 0, len(sources["test"])))


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


def _read_source(source, start: int, stop: int) -> Split:
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


def _load_with_tensorflow(spec, builder, data_dir, process_index,
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
  num_train = hosts.capped(builder.info.splits["train"].num_examples,
                           train_cap)
  start, stop = hosts.host_shard(num_train, process_index, process_count)
  arrays = {}
  for split in (f"train[{start}:{stop}]", "test"):
    data = tfds.as_numpy(tfds.load(spec.name, split=split, batch_size=-1,
                                   data_dir=data_dir, download=False))
    arrays[split] = (np.asarray(data["image"], np.uint8),
                     np.asarray(data["label"], np.int32))
  return tuple(arrays.values())
