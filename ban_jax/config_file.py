"""Reads a config file the way ml_collections' `--config` flag does, and
turns what can go wrong with `--config` into one readable message."""

import importlib.machinery
import importlib.util
import os
import sys

from absl import flags


def load(path: str, argument: str = ""):
  """`get_config(argument)` (`get_config()` without one) of the file at
  `path`, read as Python source whatever its name, as ml_collections reads
  `--config=PATH[:ARGUMENT]`."""
  loader = importlib.machinery.SourceFileLoader("_config_file", path)
  spec = importlib.util.spec_from_loader("_config_file", loader)
  module = importlib.util.module_from_spec(spec)
  loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def config_spec(argv: list[str]) -> tuple[str, str] | None:
  """(path, argument) of `--config=PATH[:ARGUMENT]` (or `--config PATH`, as
  absl also takes it; the last one counts), or None if absent."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is None:
    return None
  path, _, argument = spec.partition(":")
  return path, argument


def _load_without_overrides(argv: list[str]):
  """The config named by --config, without overrides (for error messages)."""
  spec = config_spec(argv)
  if spec is None:
    return None
  return load(*spec)


def unknown_field_message(argv: list[str]) -> str | None:
  """Names the misspelt `--config.a.b` field and lists the valid ones."""
  try:
    config = _load_without_overrides(argv)
  except Exception:  # pylint: disable=broad-except
    return None  # The original error is clearer then.
  if config is None:
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    node, prefix = config, "config"
    for key in path:
      if not hasattr(node, "keys") or key not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
        return (f"Unknown config field {prefix}.{key} (in {arg}). Valid "
                f"fields of {prefix}: {valid}.")
      node, prefix = node[key], f"{prefix}.{key}"
  return None


def missing_config_message(argv: list[str]) -> str | None:
  """Names a --config file that does not exist, and where configs are."""
  spec = config_spec(argv)
  if spec is None:
    return None
  path = spec[0]
  if os.path.isfile(path):
    return None
  return (f"ERROR: config file {path!r} not found (relative paths are from "
          f"{os.getcwd()}). The configs are in the repository's configs/ "
          "folder, e.g. --config=configs/cifar100.py.")


def config_file_message(argv: list[str]) -> str | None:
  """Says why the --config file cannot be loaded (syntax, imports, no
  get_config), or None if it loads."""
  spec = config_spec(argv)
  if spec is None:
    return None
  try:
    load(*spec)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, AttributeError) and "'get_config'" in str(e):
      return (f"ERROR: config file {spec[0]!r} has no get_config(). Pass a "
              "config file, e.g. --config=configs/cifar100.py.")
    return (f"ERROR: config file {spec[0]!r} cannot be loaded: "
            f"{type(e).__name__}: {e}. Fix it, or pass one of the "
            "repository's configs/, e.g. --config=configs/digits.py.")
  return None


def without_traceback(message: str) -> str:
  """ml_collections puts the config file's traceback into its flag error."""
  lines = [line for line in message.splitlines() if line.strip()]
  if not any(line.startswith("Traceback") for line in lines):
    return message
  return f"{lines[0]}\n{lines[-1]}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a readable message for a misspelt config field."""
  missing = missing_config_message(argv)
  if missing:
    sys.exit(missing)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {without_traceback(str(e))}\n"
             "Pass --help for usage.")
  except (AttributeError, KeyError) as e:  # ml_collections: unknown field.
    sys.exit(unknown_field_message(argv) or config_file_message(argv)
             or f"Bad config override: {e}")
  except Exception:  # pylint: disable=broad-except
    # The config file itself failed (a syntax error, an import, an error in
    # get_config); ml_collections passes that on with its traceback.
    message = config_file_message(argv)
    if message is None:
      raise
    sys.exit(message)


def check_complete(config, path: str) -> None:
  """Raises ConfigError naming `path` if its get_config() did not return a
  whole config: not a ConfigDict, or fields of the schema missing."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import ml_collections
  from ban_jax import config_schema
  from ban_jax import errors
  # pylint: enable=g-import-not-at-top,import-outside-toplevel
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(
        f"config file {path!r}: get_config() returned a "
        f"{type(config).__name__}, not an ml_collections.ConfigDict. Start "
        "it from configs/default.py's get_config(), which has every field.")
  missing = config_schema.missing_fields(config)
  if missing:
    raise errors.ConfigError(
        f"config file {path!r} lacks "
        f"{config_schema.describe_missing(missing)}. Start it from "
        "configs/default.py's get_config(), which has every field.")
