"""Reads a config file the way ml_collections' `--config` flag does."""

import importlib.machinery
import importlib.util


def load(path: str, argument: str = ""):
  """`get_config(argument)` (`get_config()` without one) of the file at
  `path`, read as Python source whatever its name, as ml_collections reads
  `--config=PATH[:ARGUMENT]`."""
  loader = importlib.machinery.SourceFileLoader("_config_file", path)
  spec = importlib.util.spec_from_loader("_config_file", loader)
  module = importlib.util.module_from_spec(spec)
  loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()
