"""scikit-learn's handwritten digits: the built-in, offline dataset.

1,797 8x8 grey images of the digits 0-9, shipped inside scikit-learn, so the
whole pipeline runs with no download. The split is fixed: a stratified 75/25
split with `random_state=0` (1,347 train, 450 test images), the same on
every machine and every run. Pixel values 0..16 are rescaled to 0..255 uint8
so that every dataset enters the model the same way.

The images are read from the file scikit-learn ships, and the split is
`sklearn.model_selection.train_test_split`'s, computed here (tests compare
the two): importing scikit-learn would add about 2 s to every run, and the
split no longer depends on the installed scikit-learn's version.
"""

import gzip
import importlib.util
import pathlib

import numpy as np

from ban_jax.data import Dataset, channel_stats

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def sklearn_digits_file() -> pathlib.Path:
  """scikit-learn's digits.csv.gz, found without importing scikit-learn."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "scikit-learn is not installed; it ships the digits dataset. "
        "Install it: pip install -r requirements.txt.")
  return pathlib.Path(spec.submodule_search_locations[0],
                      "datasets", "data", "digits.csv.gz")


def _images_and_labels() -> tuple[np.ndarray, np.ndarray]:
  """(images 1797x8x8 of levels 0..16, labels), as load_digits has them."""
  path = sklearn_digits_file()
  if not path.exists():  # Another layout: ask scikit-learn (slower).
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    return digits.images, digits.target
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = np.loadtxt(f, delimiter=",")
  return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
  """How many of each class a draw of `n_draws` takes: the floor of each
  class's share, plus one for the largest remainders (ties broken by
  `rng`), as sklearn.utils.extmath._approximate_mode does."""
  continuous = class_counts / class_counts.sum() * n_draws
  floored = np.floor(continuous)
  need_to_add = int(n_draws - floored.sum())
  remainder = continuous - floored
  for value in np.sort(np.unique(remainder))[::-1]:
    if need_to_add <= 0:
      break
    (tied,) = np.where(remainder == value)
    add_now = min(len(tied), need_to_add)
    floored[rng.choice(tied, size=add_now, replace=False)] += 1
    need_to_add -= add_now
  return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices) of train_test_split(test_size=
  test_fraction, stratify=labels, random_state=seed), in its order."""
  n_test = int(np.ceil(test_fraction * len(labels)))
  n_train = len(labels) - n_test
  _, class_of, class_counts = np.unique(labels, return_inverse=True,
                                        return_counts=True)
  by_class = np.split(np.argsort(class_of, kind="stable"),
                      np.cumsum(class_counts)[:-1])
  rng = np.random.RandomState(seed)
  n_i = _approximate_mode(class_counts, n_train, rng)
  t_i = _approximate_mode(class_counts - n_i, n_test, rng)
  train, test = [], []
  for indices, n, t in zip(by_class, n_i, t_i):
    shuffled = indices[rng.permutation(len(indices))]
    train.extend(shuffled[:n])
    test.extend(shuffled[n:n + t])
  return rng.permutation(train), rng.permutation(test)


def load() -> Dataset:
  levels, labels = _images_and_labels()
  images = np.round(levels * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = labels.astype(np.int32)
  train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
  mean, std = channel_stats(images[train])
  return Dataset(
      name="digits",
      train_images=images[train], train_labels=labels[train],
      test_images=images[test], test_labels=labels[test],
      num_classes=10, mean=mean, std=std)
