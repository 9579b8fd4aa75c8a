"""JAX's persistent compilation cache, kept in the workdir by default.

A rerun after a crash (or a later seed in a new process) loads the compiled
train and eval steps from disk instead of compiling them again, which for
the CIFAR models takes tens of seconds per (student, teacher) pair on a GPU
(docs/performance.md, "Compile time"). The executables are the ones
compiled before, so results do not change.

`config.compilation_cache_dir`:
- a relative path is taken inside the workdir (the default,
  `compile_cache`, keeps the cache with the run it belongs to);
- an absolute path (or `~/...`) can be shared by several runs;
- '' turns the cache off.

With several processes JAX writes from process 0 alone and every process
reads, so the folder must be one that all hosts see, as the workdir is. A
folder set through JAX itself (`JAX_COMPILATION_CACHE_DIR` or
`jax.config.update`) is left as it is: it takes precedence.

JAX treats the cache as trusted code: do not point it at a folder that
people you do not trust can write to.
"""

import os

import jax
from absl import logging
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

# The folder this module set last, to tell it from one set by the user.
_set_here: str | None = None


def cache_path(setting: str, workdir: str | os.PathLike) -> epath.Path | None:
  """The folder `config.compilation_cache_dir` names, or None for none."""
  if not setting:
    return None
  path = epath.Path(os.path.expanduser(os.path.expandvars(setting)))
  if not path.is_absolute():
    path = epath.Path(workdir) / path
  return path


def enable(setting: str, workdir: str | os.PathLike) -> str | None:
  """Points JAX's compilation cache at `setting`; returns the folder used.

  Must run before the train step is compiled. A folder that cannot be made
  (a read-only copy of a finished run, say) is a warning, not an error: the
  run compiles without a cache and computes the same results.
  """
  current = jax.config.jax_compilation_cache_dir
  if current and current != _set_here:
    logging.info("Compilation cache: %s (set through JAX, which takes "
                 "precedence over config.compilation_cache_dir).", current)
    return current
  path = cache_path(setting, workdir)
  if path is not None:
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      logging.warning(
          "config.compilation_cache_dir=%r: cannot make %s (%s); compiling "
          "without a cache. Name a folder you can write, or '' to silence "
          "this.", setting, path, e)
      path = None
  if path is None:
    if current:  # Set here by an earlier run in this process.
      _point_at(None)
    return None
  _point_at(os.fspath(path))
  logging.info("Compilation cache: %s", path)
  return os.fspath(path)


def _point_at(path: str | None) -> None:
  global _set_here
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX decides once per process whether a cache is in use: ask again.
  compilation_cache.reset_cache()
  _set_here = path


def xla_compiler_options(text: str) -> dict[str, str]:
  """`config.xla_options` -> XLA compile options of the train step.

  The text is `name=value` pairs separated by ';' (values may hold commas,
  as in `xla_gpu_enable_command_buffer=FUSION,CUDNN`). They apply to
  the train step alone, unlike XLA_FLAGS, so that one process can compare
  settings (`python -m ban_jax.tools.bench --xla_options=...`).
  """
  options = {}
  for item in filter(None, (part.strip() for part in text.split(";"))):
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or not name.startswith("xla_"):
      raise ValueError(
          f"xla_options item {item!r} is not 'xla_<option>=<value>'; "
          "separate items with ';'.")
    options[name] = value.strip()
  return options
