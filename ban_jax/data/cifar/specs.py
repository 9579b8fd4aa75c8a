"""What differs between CIFAR-10 and CIFAR-100, and what they share.

One `Spec` per variant says where its data sit in TFDS and in the official
archive; the readers and the missing-data message take it as an argument.
"""

import dataclasses

import numpy as np

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (32, 32, 3)
# What the readers return for a split: uint8 NHWC images, int32 labels.
Split = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Spec:
  """Where one CIFAR variant keeps what, in TFDS and in the archive."""
  name: str  # Also the TFDS dataset name.
  title: str
  num_classes: int
  archive_name: str
  folder: str  # The archive's top folder, and the extracted folder's name.
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  # Marks an extracted folder as this variant's (see archive_reader.find).
  meta_file: str
  label_key: bytes


SPECS = {
    "cifar10": Spec(
        name="cifar10", title="CIFAR-10", num_classes=10,
        archive_name="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",), meta_file="batches.meta",
        label_key=b"labels"),
    "cifar100": Spec(
        name="cifar100", title="CIFAR-100", num_classes=100,
        archive_name="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), meta_file="meta",
        # The paper's CIFAR-100 numbers are on the 100 fine classes.
        label_key=b"fine_labels"),
}
