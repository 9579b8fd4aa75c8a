"""The one error for CIFAR data that neither source has.

It lists every place the loader looked (the archive, TFDS) and the commands
that put the data there, so a first run on a new machine needs no reading.
"""

import os

from ban_jax.data.cifar.specs import CIFAR_URL, Spec
from ban_jax.errors import DataNotFoundError
from ban_jax.errors import UnreadableDataError


def not_found(spec: Spec, source, archive_path, looked, data_dir,
              data_dir_origin, tfds_dataset_dir) -> DataNotFoundError:
  """The one error for missing data: where it looked, and what to run.

  Args:
    spec: the CIFAR variant.
    source: `config.data.source`.
    archive_path: `config.data.archive_path` (None or '' if not set).
    looked: the paths the archive search checked.
    data_dir: the TFDS data dir.
    data_dir_origin: which setting chose `data_dir`.
    tfds_dataset_dir: the folder TFDS found nothing prepared in; None if
      TFDS was not tried.

  Returns:
    The error, to raise.
  """
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


def unreadable_data_dir(spec: Spec, data_dir, data_dir_origin, dataset_dir
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
