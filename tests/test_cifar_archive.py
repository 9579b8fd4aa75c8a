"""data/cifar/archive_reader.py: loading CIFAR from the official archives.

The archives are written here in the format of the official Toronto files
(tests/cifar_data.py): as tars, extracted folders and folders holding
either, and read through `cifar.load` and `load_dataset`.
"""

import tarfile

import numpy as np
import pytest

from ban_jax.data import channel_stats
from ban_jax.data import cifar
from ban_jax.data import load_dataset
from tests.cifar_data import FOLDER as _FOLDER
from tests.cifar_data import TAR as _TAR
from tests.cifar_data import cifar_files as _cifar_files
from tests.cifar_data import config as _config
from tests.cifar_data import py2_dumps as _py2_dumps
from tests.cifar_data import py3_dumps as _py3_dumps
from tests.cifar_data import write_tar as _write_tar


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
  assert ds.image_shape == (32, 32, 3)
  mean, std = channel_stats(_nhwc(expect["train_rows"]))
  np.testing.assert_allclose(ds.mean, mean)
  np.testing.assert_allclose(ds.std, std)


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
