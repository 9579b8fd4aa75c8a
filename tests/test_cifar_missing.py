"""data/cifar/missing.py: the missing-data error names places and commands."""

import glob
import os
import tempfile

import pytest

from ban_jax import errors
from ban_jax.data import cifar
from ban_jax.data import load_dataset
from ban_jax.data.cifar import tfds_reader
from tests.cifar_data import config as _config


def test_missing_data_error_names_places_and_commands(tmp_path, monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  empty = tmp_path / "empty"
  absent_archive = tmp_path / "nope" / "cifar-100-python.tar.gz"
  # TFDS makes a temp folder per unprepared dataset and leaves it behind.
  temp_folders = os.path.join(tempfile.gettempdir(), "tmp*tfds")
  before = set(glob.glob(temp_folders))
  with pytest.raises(errors.DataNotFoundError) as err:
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
  with pytest.raises(errors.DataNotFoundError) as err:
    cifar.load("cifar10", _config(data_dir=None))
  message = str(err.value)
  assert f"data_dir={env_dir} (from $TFDS_DATA_DIR)" in message
  assert "config.data.archive_path is not set" in message
  assert (f"tfds build cifar10 --file_format=array_record "
          f"--data_dir={env_dir}") in message
  assert "/path/to/cifar-10-python.tar.gz" in message


def test_missing_data_default_data_dir(monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  data_dir, origin = tfds_reader.resolve_data_dir(None)
  assert data_dir == os.path.join(os.path.expanduser("~"),
                                  "tensorflow_datasets")
  assert origin == "the TFDS default"


def test_missing_archive_with_source_archive(tmp_path):
  with pytest.raises(errors.DataNotFoundError) as err:
    cifar.load("cifar10", _config(source="archive",
                                  archive_path=str(tmp_path)))
  message = str(err.value)
  assert f"checked {tmp_path}, {tmp_path}/cifar-10-batches-py, " in message
  assert "TFDS: not tried" in message
