"""data/cifar/tfds_reader.py: loading CIFAR from a prepared TFDS dataset.

No network: TFDS is driven by `tfds.testing.mock_data`, or reads a small
dataset prepared here by hand.
"""

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ban_jax import errors
from ban_jax.data import cifar
from ban_jax.data import load_dataset
from tests.cifar_data import config as _config


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
  assert ds.num_classes == 100
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
  i % num_classes.
  """
  image_lib = pytest.importorskip("PIL.Image")
  array_record_module = pytest.importorskip(
      "array_record.python.array_record_module")
  builder = tfds.builder(name, data_dir=str(data_dir),
                         file_format=file_format)
  os.makedirs(builder.data_dir)
  features = builder.info.features
  num_classes = features["label"].num_classes
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

  # data_dir=None honours $TFDS_DATA_DIR, read at call time.
  monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
  shard = cifar.load("cifar10", _config(source="tfds"), process_index=1,
                     process_count=3)
  np.testing.assert_array_equal(shard.train_images[:, 0, 0, 0], [3, 4, 5])
  assert len(shard.test_labels) == 4
  # A config data_dir wins over the environment.
  with pytest.raises(errors.DataNotFoundError, match="elsewhere"):
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
  with pytest.raises(errors.UnreadableDataError) as err:
    cifar.load("cifar100", _config(data_dir=str(data_dir)))
  message = str(err.value)
  assert "tfrecord" in message and "pip install -e '.[prepare]'" in message
  assert (f"tfds build cifar100 --file_format=array_record "
          f"--data_dir={data_dir} --overwrite") in message
