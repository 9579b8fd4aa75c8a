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

Modules: `specs` (what differs between the two variants), `tfds_reader`,
`archive_reader` (with `unpickler`, the restricted unpickler), `hosts` (host
shards, combined channel statistics) and `missing` (the missing-data error);
this one chooses the source and assembles the `Dataset`.
"""

import dataclasses

from absl import logging
import jax

from ban_jax.data import Dataset
from ban_jax.data.cifar import archive_reader
from ban_jax.data.cifar import hosts
from ban_jax.data.cifar import missing
from ban_jax.data.cifar import tfds_reader
from ban_jax.data.cifar.specs import SPECS, Spec, Split


def load(name: str, data_config, *, process_index: int | None = None,
         process_count: int | None = None) -> Dataset:
  """Loads CIFAR-10 or CIFAR-100 into host memory.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_config: `config.data`; reads `source`, `data_dir`, `archive_path`
      and `max_train_examples`.
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
  request = _request(name, data_config, process_index, process_count)
  if request.source == "archive" or (request.source == "auto" and
                                     request.archive is not None):
    (train_x, train_y), (test_x, test_y) = _from_archive(request)
  else:
    (train_x, train_y), (test_x, test_y) = _from_tfds(request)
  mean, std = hosts.train_channel_stats(train_x, request.process_count)
  return Dataset(
      name=name,
      train_images=train_x, train_labels=train_y,
      test_images=test_x, test_labels=test_y,
      num_classes=request.spec.num_classes, mean=mean, std=std)


@dataclasses.dataclass(frozen=True)
class _Request:
  """What to load, for which host, and where to look (from `load`'s args)."""
  spec: Spec
  process_index: int
  process_count: int
  # config.data.max_train_examples; None keeps the whole train split.
  train_cap: int | None
  source: str  # config.data.source.
  archive_path: str | None  # config.data.archive_path.
  # None: archive_path is not set, or nothing is there.
  archive: archive_reader.Archive | None
  looked: list[str]  # Where the archive search looked, for the message.
  data_dir: str
  data_dir_origin: str  # Which setting chose data_dir, for messages.

  def not_found(self, tfds_dataset_dir: str | None = None):
    """The missing-data error; `tfds_dataset_dir` None: TFDS not tried.

    A data_dir this user may not read looks unprepared to TFDS too: that
    gets its own error, which says so.
    """
    if tfds_dataset_dir is not None:
      unreadable = missing.unreadable_data_dir(
          self.spec, self.data_dir, self.data_dir_origin, tfds_dataset_dir)
      if unreadable is not None:
        return unreadable
    return missing.not_found(self.spec, self.source, self.archive_path,
                             self.looked, self.data_dir, self.data_dir_origin,
                             tfds_dataset_dir)


def _request(name, data_config, process_index, process_count) -> _Request:
  """Checks `load`'s arguments and finds the archive, if one is set."""
  if name not in SPECS:
    raise ValueError(f"Unknown CIFAR variant {name!r}; expected one of "
                     f"{', '.join(SPECS)}.")
  spec = SPECS[name]
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count}).")
  archive_path = data_config.archive_path
  data_dir, data_dir_origin = tfds_reader.resolve_data_dir(
      data_config.data_dir)
  archive, looked = (archive_reader.find(spec, archive_path) if archive_path
                     else (None, []))
  return _Request(
      spec=spec, process_index=process_index, process_count=process_count,
      # A smoke run's cap applies to the whole split, before it is divided
      # between the hosts, so that N hosts train on the same examples as one.
      train_cap=data_config.max_train_examples or None,
      source=data_config.source,
      archive_path=archive_path, archive=archive, looked=looked,
      data_dir=data_dir, data_dir_origin=data_dir_origin)


def _from_archive(request: _Request) -> tuple[Split, Split]:
  """This host's train shard and the whole test split, from the archive."""
  if request.archive is None:
    raise request.not_found()
  logging.info("Loading %s from %s.", request.spec.title,
               request.archive.path)
  splits = archive_reader.load(request.spec, request.archive)
  start, stop = hosts.host_shard(
      hosts.capped(len(splits["train"][1]), request.train_cap),
      request.process_index, request.process_count)
  # A copy, so that the rest of the split can be freed.
  train = tuple(a[start:stop].copy() if stop - start < len(a) else a
                for a in splits["train"])
  return train, splits["test"]


def _from_tfds(request: _Request) -> tuple[Split, Split]:
  """This host's train shard and the whole test split, from TFDS."""
  logging.info("Loading %s from TFDS data_dir=%s (%s).", request.spec.title,
               request.data_dir, request.data_dir_origin)
  return tfds_reader.load(request.spec, request.data_dir,
                          request.process_index, request.process_count,
                          request.train_cap, not_found=request.not_found)
