"""The package's layers: every import goes down, never up or sideways.

A newcomer should be able to name the folder for a change before opening a
file; that only holds while the layers stay layers. Each module of ban_jax
belongs to one layer below; a module may import from lower layers, and from
its own package (models.resnet builds on models.densenet), but not from a
module of its own layer elsewhere (validation sits beside train and must not
borrow from it) nor from any layer above.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ban_jax"

# Lowest first. A name ending in "." is a package prefix.
LAYERS = (
    ("errors",),
    ("runtime.",),
    # Pure: the run's time left and the epoch's progress bar.
    ("progress",),
    ("losses", "feature_losses", "models.", "data.", "reporting."),
    # The schema names the valid datasets and losses.
    ("config_schema",),
    ("train", "validation"),
    ("pipeline",),
    ("config_file",),
    ("main",),
    ("tools.", "models.__main__"),
    ("bench",),  # `python -m ban_jax.bench`, the benchmark's short name.
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _layer(module: str) -> int:
  """Index of the layer holding `module` (relative to ban_jax)."""
  best = None
  for index, names in enumerate(LAYERS):
    for name in names:
      if module == name or (name.endswith(".") and
                            (module + ".").startswith(name)):
        # The most specific entry wins (models.__main__ over models.).
        if best is None or len(name) > best[1]:
          best = (index, len(name))
  if best is None:
    raise AssertionError(
        f"ban_jax.{module} is in no layer of tests/test_layout.py: add it "
        "to the layer it belongs to.")
  return best[0]


def _group(module: str) -> str:
  """The top-level package (models, data, ...) or the module itself."""
  return module.partition(".")[0]


def _imports(path: pathlib.Path) -> set[str]:
  """ban_jax modules that `path` imports (relative names, no prefix)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module == "ban_jax" or node.module.startswith("ban_jax.")):
      base = node.module[len("ban_jax."):] if "." in node.module else ""
      for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        # `from ban_jax.data import Dataset` names a module's attribute.
        is_module = (PACKAGE / (candidate.replace(".", "/") + ".py")).exists(
        ) or (PACKAGE / candidate.replace(".", "/")).is_dir()
        found.add(candidate if is_module else base)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("ban_jax."):
          found.add(alias.name[len("ban_jax."):])
  found.discard("")
  return found


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py")
                if _module_name(p) not in ("",))


@pytest.mark.parametrize("path", _modules(),
                         ids=lambda p: _module_name(p) or "ban_jax")
def test_imports_only_go_down(path):
  module = _module_name(path)
  here = _layer(module)
  for imported in _imports(path):
    there = _layer(imported)
    same_group = _group(imported) == _group(module)
    assert there < here or (there == here and same_group), (
        f"ban_jax.{module} (layer {here}) imports ban_jax.{imported} "
        f"(layer {there}): imports go down only.")


def test_the_layer_rule_catches_an_upward_import():
  assert _layer("validation") == _layer("train")
  assert _layer("runtime.checkpoints") < _layer("train") < _layer("pipeline")
  assert _layer("models.__main__") > _layer("models.wrn")
  with pytest.raises(AssertionError, match="in no layer"):
    _layer("somewhere_new")
