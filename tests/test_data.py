"""Tests for the CIFAR data layer, the digits and the augmentation.

No network: the archives are written here in the format of the official
Toronto files, TFDS is driven by `tfds.testing.mock_data` or by a small
array_record dataset prepared here by hand.
"""

import glob
import io
import os
import pickle
import struct
import tarfile
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from ban_jax.data import augment
from ban_jax.data import channel_stats
from ban_jax.data import cifar
from ban_jax.data import digits
from ban_jax.data import load_dataset

# ---------------------------------------------------------------------------
# Writing CIFAR archives in the real format.
# ---------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
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


def _py2_dumps(obj) -> bytes:
  f = io.BytesIO()
  _Py2Pickler(f, protocol=2).dump(obj)
  return f.getvalue()


def _py3_dumps(obj) -> bytes:
  return pickle.dumps(obj, protocol=2)


def _chw_rows(n, seed):
  """(n, 3072) uint8 rows; row 0 is zero except pixel (1, 2) = (10, 20, 30)."""
  data = np.random.default_rng(seed).integers(0, 256, (n, 3072), np.uint8)
  data[0] = 0
  # Channel-major: channel c, row r, column x sits at c*1024 + r*32 + x.
  data[0, 0 * 1024 + 1 * 32 + 2] = 10
  data[0, 1 * 1024 + 1 * 32 + 2] = 20
  data[0, 2 * 1024 + 1 * 32 + 2] = 30
  return data


def _cifar_files(name, dumps, n_per_batch=3, n_test=4):
  """{file name: pickle bytes} and the expected arrays for one archive."""
  files, expect = {}, {}
  if name == "cifar10":
    train_rows, train_labels = [], []
    for i in range(1, 6):
      rows = _chw_rows(n_per_batch, seed=i)
      labels = [(3 * i + j) % 10 for j in range(n_per_batch)]
      files[f"data_batch_{i}"] = dumps({
          b"batch_label": f"training batch {i} of 5".encode(),
          b"labels": labels, b"data": rows,
          b"filenames": [f"img_{i}_{j}.png".encode()
                         for j in range(n_per_batch)]})
      train_rows.append(rows)
      train_labels += labels
    test_rows = _chw_rows(n_test, seed=9)
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
    train_rows = [_chw_rows(5 * n_per_batch, seed=1)]
    train_labels = [(7 * j) % 100 for j in range(5 * n_per_batch)]
    test_rows = _chw_rows(n_test, seed=9)
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
  expect["names"] = tuple(names)
  return files, expect


_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_TAR = {"cifar10": "cifar-10-python.tar.gz",
        "cifar100": "cifar-100-python.tar.gz"}


def _write_tar(path, folder, files):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(folder)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
    for file_name, payload in files.items():
      info = tarfile.TarInfo(f"{folder}/{file_name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return str(path)


def _config(**kwargs):
  return ml_collections.ConfigDict(kwargs)


def _nhwc(rows):
  return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _check_loaded(ds, name, expect):
  num_classes = 10 if name == "cifar10" else 100
  assert ds.name == name and ds.num_classes == num_classes
  assert ds.train_images.shape == (15, 32, 32, 3)
  assert ds.test_images.shape == (4, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  # The known pixel: channel-major bytes came out as one HWC pixel.
  np.testing.assert_array_equal(ds.train_images[0, 1, 2], [10, 20, 30])
  np.testing.assert_array_equal(ds.test_images[0, 1, 2], [10, 20, 30])
  assert ds.train_images[0].sum() == 60  # ... and nowhere else.
  np.testing.assert_array_equal(ds.train_images, _nhwc(expect["train_rows"]))
  np.testing.assert_array_equal(ds.test_images, _nhwc(expect["test_rows"]))
  np.testing.assert_array_equal(ds.train_labels, expect["train_labels"])
  np.testing.assert_array_equal(ds.test_labels, expect["test_labels"])
  assert ds.label_names == expect["names"]
  assert ds.image_shape == (32, 32, 3)
  mean, std = channel_stats(_nhwc(expect["train_rows"]))
  np.testing.assert_allclose(ds.mean, mean)
  np.testing.assert_allclose(ds.std, std)


# ---------------------------------------------------------------------------
# Archives.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("dumps", [_py2_dumps, _py3_dumps],
                         ids=["python2_format", "python3_protocol2"])
def test_archive_tar_loads(tmp_path, name, dumps):
  files, expect = _cifar_files(name, dumps)
  path = _write_tar(tmp_path / _TAR[name], _FOLDER[name], files)
  ds = load_dataset(_config(name=name, archive_path=path))
  _check_loaded(ds, name, expect)
  # source='archive' takes the same path.
  ds = cifar.load(name, _config(source="archive", archive_path=path))
  _check_loaded(ds, name, expect)


def test_python2_format_pickle_is_what_python2_wrote():
  # The helper must really produce Python 2 opcodes, or the test above
  # would not cover the real files.
  blob = _py2_dumps({b"data": np.zeros((1, 3), np.uint8)})
  assert b"_codecs" not in blob and b"numpy.core.multiarray" in blob
  assert b"_codecs" in _py3_dumps({b"k": b"v"})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_archive_extracted_and_directory_forms(tmp_path, name):
  files, expect = _cifar_files(name, _py2_dumps)
  tar_dir = tmp_path / "tar_here"
  tar_dir.mkdir()
  tar_path = _write_tar(tar_dir / _TAR[name], _FOLDER[name], files)
  extract_root = tmp_path / "extracted"
  with tarfile.open(tar_path) as tar:
    tar.extractall(extract_root, filter="data")
  for path in (tar_dir,                          # Directory holding the tar.
               extract_root,                     # Holding the folder.
               extract_root / _FOLDER[name]):    # The folder itself.
    ds = cifar.load(name, _config(archive_path=str(path)))
    _check_loaded(ds, name, expect)


def test_archive_of_the_other_dataset_is_named(tmp_path):
  files, _ = _cifar_files("cifar10", _py3_dumps)
  path = _write_tar(tmp_path / "cifar-10-python.tar.gz", _FOLDER["cifar10"],
                    files)
  with pytest.raises(ValueError, match="cifar-100-python/train.*CIFAR-100"):
    cifar.load("cifar100", _config(archive_path=path))


def test_archive_host_shard(tmp_path):
  files, expect = _cifar_files("cifar10", _py3_dumps)
  path = _write_tar(tmp_path / _TAR["cifar10"], _FOLDER["cifar10"], files)
  ds = cifar.load("cifar10", _config(archive_path=path), process_index=1,
                  process_count=2)
  # 15 examples over 2 hosts: 7 each, host 1 gets examples 7..13.
  np.testing.assert_array_equal(ds.train_labels, expect["train_labels"][7:14])
  np.testing.assert_array_equal(ds.train_images,
                                _nhwc(expect["train_rows"])[7:14])
  assert len(ds.test_labels) == 4  # Every host keeps all of the test split.


def test_train_cap_applies_to_the_whole_split_before_sharding(tmp_path):
  files, expect = _cifar_files("cifar10", _py3_dumps)
  path = _write_tar(tmp_path / _TAR["cifar10"], _FOLDER["cifar10"], files)
  config = _config(archive_path=path, max_train_examples=9)
  hosts = [cifar.load("cifar10", config, process_index=i, process_count=2)
           for i in range(2)]
  # The first 9 of 15 examples, 4 per host: the rows one host would train
  # on with the same cap (less the odd one out), not 9 per host.
  np.testing.assert_array_equal(hosts[0].train_labels,
                                expect["train_labels"][0:4])
  np.testing.assert_array_equal(hosts[1].train_labels,
                                expect["train_labels"][4:8])
  one_host = load_dataset(_config(name="cifar10", archive_path=path,
                                  max_train_examples=9, max_test_examples=3))
  np.testing.assert_array_equal(one_host.train_labels,
                                expect["train_labels"][:9])
  # The test cap keeps the first images with their own labels.
  np.testing.assert_array_equal(one_host.test_labels,
                                expect["test_labels"][:3])
  np.testing.assert_array_equal(one_host.test_images,
                                _nhwc(expect["test_rows"])[:3])


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
  with pytest.raises(cifar.UnsafePickleError) as err:
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

  with pytest.raises(cifar.UnsafePickleError,
                     match="unpickle some/file: .*encoding='rot13'"):
    cifar.restricted_load(pickle.dumps(Rot13(), protocol=2), "some/file")
  assert cifar.restricted_load(pickle.dumps(b"\xff\x00", protocol=2),
                               "where") == b"\xff\x00"


def test_truncated_pickle_is_a_clear_error():
  blob = _py3_dumps({b"data": np.zeros((2, 3072), np.uint8)})
  with pytest.raises(ValueError, match="Could not unpickle somefile"):
    cifar.restricted_load(blob[:100], "somefile")


# ---------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------


def test_tfds_mock_cifar100():
  with tfds.testing.mock_data(num_examples=20,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = load_dataset(_config(name="cifar100", source="tfds"))
    shard = cifar.load("cifar100", _config(source="tfds"), process_index=2,
                       process_count=3)
  assert ds.train_images.shape == (20, 32, 32, 3)
  assert ds.test_images.shape == (20, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.num_classes == 100 and len(ds.label_names) == 100
  # The mock has no labels file; the real CIFAR-100 names stand in.
  assert ds.label_names[:2] == ("apple", "aquarium_fish")
  assert ds.label_names[-1] == "worm"
  assert 0 <= ds.train_labels.min() and ds.train_labels.max() < 100
  assert ds.train_images.std() > 0  # Real (random) pixels, not zeros.
  assert len(ds.mean) == 3 and len(ds.std) == 3
  assert shard.train_images.shape == (6, 32, 32, 3)  # 20 // 3
  with tfds.testing.mock_data(num_examples=20,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    capped = cifar.load("cifar100", _config(source="tfds",
                                            max_train_examples=12),
                        process_index=1, process_count=3)
  # 12 of the 20 over 3 hosts: host 1 has examples 4..7.
  np.testing.assert_array_equal(capped.train_labels, ds.train_labels[4:8])
  assert shard.test_images.shape == (20, 32, 32, 3)


def _prepare_tfds(data_dir, name, n_train, n_test, file_format):
  """Writes a small prepared TFDS dataset by hand (no TensorFlow needed).

  Image i of each split has pixel (0, 0) = (i, split id, 7) and label
  i % num_classes; the label names are written as TFDS writes them.
  """
  image_lib = pytest.importorskip("PIL.Image")
  array_record_module = pytest.importorskip(
      "array_record.python.array_record_module")
  builder = tfds.builder(name, data_dir=str(data_dir),
                         file_format=file_format)
  os.makedirs(builder.data_dir)
  features = builder.info.features
  num_classes = features["label"].num_classes
  features["label"].names = [f"real{i}" for i in range(num_classes)]
  rng = np.random.default_rng(0)
  split_infos = []
  for split_id, (split, n) in enumerate((("train", n_train),
                                         ("test", n_test))):
    template = tfds.core.naming.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=name, split=split,
        filetype_suffix=file_format)
    if file_format == "array_record":
      writer = array_record_module.ArrayRecordWriter(
          os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)),
          "group_size:1")
      for i in range(n):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        image[0, 0] = (i, split_id, 7)
        png = io.BytesIO()
        image_lib.fromarray(image).save(png, format="PNG")
        example = {"id": f"{split}_{i}", "image": png.getvalue(),
                   "label": i % num_classes}
        if "coarse_label" in features:
          example["coarse_label"] = i % 20
        writer.write(features.serialize_example(example))
      writer.close()
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[n], num_bytes=0,
        filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.set_file_format(file_format)
  builder.info.write_to_directory(builder.data_dir)


def test_tfds_prepared_array_record_real_reader(tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  _prepare_tfds(data_dir, "cifar10", n_train=10, n_test=4,
                file_format="array_record")
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  ds = cifar.load("cifar10", _config(source="tfds", data_dir=str(data_dir)))
  assert ds.train_images.shape == (10, 32, 32, 3)
  assert ds.test_images.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(ds.train_labels, np.arange(10) % 10)
  np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], np.arange(10))
  np.testing.assert_array_equal(ds.train_images[:, 0, 0, 1], 0)
  np.testing.assert_array_equal(ds.test_images[:, 0, 0, 1], 1)
  np.testing.assert_array_equal(ds.test_images[:, 0, 0, 2], 7)
  # Names from the labels file TFDS wrote, not the built-in fallback.
  assert ds.label_names == tuple(f"real{i}" for i in range(10))

  # data_dir=None honours $TFDS_DATA_DIR, read at call time.
  monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
  shard = cifar.load("cifar10", _config(source="tfds"), process_index=1,
                     process_count=3)
  np.testing.assert_array_equal(shard.train_images[:, 0, 0, 0], [3, 4, 5])
  assert len(shard.test_labels) == 4
  # A config data_dir wins over the environment.
  with pytest.raises(cifar.DataNotFoundError, match="elsewhere"):
    cifar.load("cifar10", _config(source="tfds",
                                  data_dir=str(tmp_path / "elsewhere")))


def test_tfds_prepared_as_tfrecord_says_how_to_rebuild(tmp_path):
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("TensorFlow is installed: tfrecord is read through it.")
  except ImportError:
    pass
  data_dir = tmp_path / "tfds"
  _prepare_tfds(data_dir, "cifar100", n_train=2, n_test=2,
                file_format="tfrecord")
  with pytest.raises(cifar.UnreadableDataError) as err:
    cifar.load("cifar100", _config(data_dir=str(data_dir)))
  message = str(err.value)
  assert "tfrecord" in message and "pip install -e '.[prepare]'" in message
  assert (f"tfds build cifar100 --file_format=array_record "
          f"--data_dir={data_dir} --overwrite") in message


# ---------------------------------------------------------------------------
# Missing data.
# ---------------------------------------------------------------------------


def test_missing_data_error_names_places_and_commands(tmp_path, monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  empty = tmp_path / "empty"
  absent_archive = tmp_path / "nope" / "cifar-100-python.tar.gz"
  # TFDS makes a temp folder per unprepared dataset and leaves it behind.
  temp_folders = os.path.join(tempfile.gettempdir(), "tmp*tfds")
  before = set(glob.glob(temp_folders))
  with pytest.raises(cifar.DataNotFoundError) as err:
    load_dataset(_config(name="cifar100", data_dir=str(empty),
                         archive_path=str(absent_archive)))
  assert set(glob.glob(temp_folders)) <= before
  assert isinstance(err.value, FileNotFoundError)
  message = str(err.value)
  expected = [
      "CIFAR-100 not found",
      f"archive_path={absent_archive}: checked {absent_archive}",
      f"TFDS 'cifar100' in data_dir={empty} (from config.data.data_dir)",
      f"nothing prepared in {empty}/cifar100/",
      "pip install -e '.[prepare]'",
      f"tfds build cifar100 --file_format=array_record --data_dir={empty}\n",
      "--config.data.archive_path=/path/to/cifar-100-python.tar.gz",
      "https://www.cs.toronto.edu/~kriz/cifar.html",
  ]
  for part in expected:
    assert part in message, (part, message)


def test_missing_data_error_uses_tfds_data_dir_env(tmp_path, monkeypatch):
  env_dir = tmp_path / "from_env"
  monkeypatch.setenv("TFDS_DATA_DIR", str(env_dir))
  with pytest.raises(cifar.DataNotFoundError) as err:
    cifar.load("cifar10", _config(data_dir=None))
  message = str(err.value)
  assert f"data_dir={env_dir} (from $TFDS_DATA_DIR)" in message
  assert "config.data.archive_path is not set" in message
  assert (f"tfds build cifar10 --file_format=array_record "
          f"--data_dir={env_dir}") in message
  assert "/path/to/cifar-10-python.tar.gz" in message


def test_missing_data_default_data_dir(monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  data_dir, origin = cifar.resolve_data_dir(None)
  assert data_dir == os.path.join(os.path.expanduser("~"),
                                  "tensorflow_datasets")
  assert origin == "the TFDS default"


def test_missing_archive_with_source_archive(tmp_path):
  with pytest.raises(cifar.DataNotFoundError) as err:
    cifar.load("cifar10", _config(source="archive",
                                  archive_path=str(tmp_path)))
  message = str(err.value)
  assert f"checked {tmp_path}, {tmp_path}/cifar-10-batches-py, " in message
  assert "TFDS: not tried" in message


def test_bad_source_is_rejected():
  with pytest.raises(ValueError, match="'tfrecords'"):
    cifar.load("cifar10", _config(source="tfrecords"))


# ---------------------------------------------------------------------------
# Stats and host shards.
# ---------------------------------------------------------------------------


def test_combine_channel_stats_matches_whole():
  images = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 3), np.uint8)
  images[:5] //= 4  # Shards with different means.
  shards = [images[:5], images[5:12], images[12:]]
  stats = [channel_stats(s) for s in shards]
  mean, std = cifar.combine_channel_stats(
      [len(s) for s in shards], [m for m, _ in stats], [s for _, s in stats])
  whole_mean, whole_std = channel_stats(images)
  np.testing.assert_allclose(mean, whole_mean, rtol=1e-12)
  np.testing.assert_allclose(std, whole_std, rtol=1e-12)


def test_global_channel_stats_runs_in_one_process():
  # The multi-host path (an allgather) degenerates to the identity here;
  # this at least runs it.
  mean, std = cifar._global_channel_stats(  # pylint: disable=protected-access
      10, (1.5, 2.0, 3.0), (0.5, 1.0, 2.0))
  np.testing.assert_allclose(mean, (1.5, 2.0, 3.0))
  np.testing.assert_allclose(std, (0.5, 1.0, 2.0))


def test_host_shard():
  assert [cifar.host_shard(50000, i, 3) for i in range(3)] == [
      (0, 16666), (16666, 33332), (33332, 49998)]
  assert cifar.host_shard(50000, 0, 1) == (0, 50000)


# ---------------------------------------------------------------------------
# Augmentation.
# ---------------------------------------------------------------------------


def _coordinate_images(n):
  """Pixel (r, c) of image b is (r, c, b % 256): values name positions."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[..., 0] = rows
  images[..., 1] = cols
  images[..., 2] = (np.arange(n) % 256)[:, None, None]
  return images


def _find_crops(images, out, pad=4):
  """For each output, every (dy, dx, flipped) it equals, by brute force."""
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode="reflect")
  windows = np.lib.stride_tricks.sliding_window_view(
      padded, images.shape[1:3], axis=(1, 2))  # (B, 9, 9, C, 32, 32)
  windows = np.moveaxis(windows, 3, -1)  # (B, 9, 9, 32, 32, C)
  matches = []
  for start in range(0, len(out), 250):
    w = windows[start:start + 250]
    o = out[start:start + 250, None, None]
    plain = (w == o).all(axis=(3, 4, 5))
    flipped = (w[:, :, :, :, ::-1] == o).all(axis=(3, 4, 5))
    matches.append(np.stack([plain, flipped], -1))  # (b, 9, 9, 2)
  return np.concatenate(matches)


def test_crops_stay_inside_padded_image_and_flip_half_the_time():
  n = 2000
  images = _coordinate_images(n)
  out = np.asarray(augment.random_crop_flip(jax.random.key(0),
                                            jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == np.uint8
  matches = _find_crops(images, out)
  # Each output is exactly one window of its own padded image at one
  # offset in [0, 8]^2, possibly flipped.
  np.testing.assert_array_equal(matches.sum(axis=(1, 2, 3)), 1)
  which = np.argwhere(matches)  # (n, 4): b, dy, dx, flipped
  np.testing.assert_array_equal(which[:, 0], np.arange(n))
  # Every one of the 81 offsets occurs (about 25 times each).
  offsets = set(map(tuple, which[:, 1:3]))
  assert offsets == {(dy, dx) for dy in range(9) for dx in range(9)}
  # ... uniformly: each of the 9 shifts along an axis about 2000 / 9 = 222
  # times (binomial sd 14), none twice as often as the others.
  for axis in (1, 2):
    counts = np.bincount(which[:, axis], minlength=9)
    assert counts.min() >= 160 and counts.max() <= 290, counts
  flip_fraction = which[:, 3].mean()
  assert 0.45 <= flip_fraction <= 0.55, flip_fraction


def test_crop_flip_is_a_function_of_the_key():
  images = jnp.asarray(_coordinate_images(64))
  a = augment.random_crop_flip(jax.random.key(1), images)
  b = jax.jit(augment.random_crop_flip)(jax.random.key(1), images)
  c = augment.random_crop_flip(jax.random.key(2), images)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_crop_flip_without_padding_only_flips():
  images = _coordinate_images(16)
  out = np.asarray(augment.random_crop_flip(jax.random.key(3),
                                            jnp.asarray(images), pad=0))
  same = (out == images).all(axis=(1, 2, 3))
  flipped = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
  assert (same ^ flipped).all()
  with pytest.raises(ValueError, match="pad=32"):
    augment.random_crop_flip(jax.random.key(0), jnp.asarray(images), pad=32)


def test_crop_padding_must_be_below_each_side():
  # 'reflect' mirrors without repeating the edge: pad = side - 1 is the
  # most it can do, and every output is still one window of that image.
  images = _coordinate_images(64)[:, :4, :6]  # 4x6
  out = np.asarray(augment.random_crop_flip(jax.random.key(4),
                                            jnp.asarray(images), pad=3))
  # (On so small an image, several windows can be equal.)
  assert _find_crops(images, out, pad=3).any(axis=(1, 2, 3)).all()
  for pad, shape, message in [
      (-1, (32, 32), "pad=-1 must be in [0, 32) for 32x32 images."),
      (4, (4, 6), "pad=4 must be in [0, 4) for 4x6 images."),
      (4, (6, 4), "pad=4 must be in [0, 4) for 6x4 images.")]:
    with pytest.raises(ValueError) as error:
      augment.random_crop_flip(jax.random.key(0),
                               jnp.zeros((2,) + shape + (3,), jnp.uint8), pad)
    assert str(error.value) == message


def test_normalize_hand_values():
  pixels = jnp.array([[[[12, 20, 40], [10, 24, 25]]]], jnp.uint8)  # (1,1,2,3)
  out = augment.normalize(pixels, mean=(10.0, 20.0, 30.0), std=(2, 4, 5))
  np.testing.assert_allclose(out, [[[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]]])
  assert out.dtype == jnp.float32
  half = augment.normalize(jnp.array([[0, 255, 51]], jnp.uint8), 127.5, 127.5,
                           dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), [[-1.0, 1.0, -0.6]],
                             atol=4e-3)
  # The arithmetic is float32 and only the result is rounded to bfloat16:
  # (200 - 125.3) / 1.7 = 43.94 -> 44.0 and (77 - 125.3) / 1.7 = -28.41 ->
  # -28.375, where bfloat16 arithmetic (mean 125.5, std 1.703125) would
  # give 43.75 and -28.5.
  half = augment.normalize(jnp.array([200, 77], jnp.uint8), 125.3, 1.7,
                           dtype=jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(half, np.float32), [44.0, -28.375])


def test_evaluation_path_is_untouched():
  # Evaluation only normalises: no key, no crop, no flip, the same every
  # call, and the pixels keep their places.
  images = jnp.asarray(_coordinate_images(8))
  a = jax.jit(lambda x: augment.normalize(x, (0, 0, 0), (1, 1, 1)))(images)
  np.testing.assert_array_equal(a, np.asarray(images, np.float32))


# ---------------------------------------------------------------------------
# Digits.
# ---------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_rescaled():
  ds = digits.load()
  assert (ds.name, ds.num_classes, ds.image_shape) == ("digits", 10, (8, 8, 1))
  assert ds.label_names == ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
  assert ds.train_images.shape == (1347, 8, 8, 1)
  assert ds.test_images.shape == (450, 8, 8, 1)
  assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  # Stratified: each class's test share is its 25% rounded (the classes
  # have 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 images).
  np.testing.assert_array_equal(np.bincount(ds.test_labels),
                                [45, 46, 44, 46, 45, 46, 45, 45, 43, 45])
  np.testing.assert_array_equal(np.bincount(ds.train_labels),
                                [133, 136, 133, 137, 136, 136, 136, 134, 131,
                                 135])
  # The split of random_state=0, the same everywhere: its first labels, and
  # its first test images are sklearn's digits 1364, 1579 and 1023.
  assert ds.train_labels[:8].tolist() == [7, 3, 6, 6, 7, 6, 7, 9]
  assert ds.test_labels[:8].tolist() == [2, 0, 4, 9, 4, 1, 2, 4]
  # Levels 0..16 -> round(level * 255 / 16), half to even (127.5 -> 128).
  levels = np.array([0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191,
                     207, 223, 239, 255], np.uint8)
  raw = sk_datasets.load_digits()
  np.testing.assert_array_equal(
      ds.test_images[:3, ..., 0],
      levels[raw.images[[1364, 1579, 1023]].astype(int)])
  np.testing.assert_array_equal(
      np.unique(np.concatenate([ds.train_images, ds.test_images])), levels)
  # Normalised with the training split's statistics only.
  assert ds.mean == channel_stats(ds.train_images)[0]
  assert ds.std == channel_stats(ds.train_images)[1]
  np.testing.assert_allclose(ds.mean, [ds.train_images.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [ds.train_images.std()], rtol=1e-12)
  assert ds.mean != channel_stats(ds.test_images)[0]


def test_load_dataset_caps_digits_and_names_unknown_datasets():
  full = load_dataset(_config(name="digits"))
  capped = load_dataset(_config(name="digits", max_train_examples=100,
                                max_test_examples=30))
  for split, cap in (("train", 100), ("test", 30)):
    for part in ("images", "labels"):
      np.testing.assert_array_equal(getattr(capped, f"{split}_{part}"),
                                    getattr(full, f"{split}_{part}")[:cap])
  with pytest.raises(ValueError) as error:
    load_dataset(_config(name="mnist"))
  assert str(error.value) == (
      "Unknown dataset 'mnist'. Valid dataset names: digits, cifar10, "
      "cifar100.")
