"""Files of a workdir that a kill at any moment must not leave half written."""

from etils import epath


def write_atomically(path: epath.Path, data: str | bytes) -> None:
  """A run killed while writing leaves the old file, never half a new one.

  A file that already holds `data` is left alone: rerunning a finished
  chain then writes no result, so it also runs on a read-only copy.
  """
  if isinstance(data, str):
    data = data.encode("utf-8")
  if path.exists() and path.read_bytes() == data:
    return
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_bytes(data)
  tmp.replace(path)
