"""The config schema: configs/default.py's fields, and a rule for each.

configs/default.py is the one place a field is declared: its name, its
default and a one-line comment; `KNOWN_FIELDS` are its flattened names and
`RERUN_SAFE_FIELDS` the tuple it declares beside them. `RULES` gives each
field its type and range (or choices), which `validation.validate` checks
before any compute; checks that need more than one field or the library
(model names, the dataset's image size, seeds, ensembles, XLA options)
are in validation.py. tests/test_configs.py fails when a field has no rule,
a rule no field, or a shipped config a field the default lacks.

configs/default.py is read by its path beside the ban_jax package: that is
the repository root in a checkout or an editable install, and
site-packages in a regular one (setup.cfg installs `configs` beside
`ban_jax`). Not `import configs`: another `configs` on sys.path, as many
projects have, would be taken instead.
"""

import dataclasses
import importlib.util
import math
import numbers
import pathlib
from typing import Any

import ml_collections

from ban_jax.data import DATA_SOURCES
from ban_jax.data import DATASET_NAMES
from ban_jax.losses import DISTILL_LOSSES

DEFAULT_CONFIG_PATH = (pathlib.Path(__file__).resolve().parent.parent
                       / "configs" / "default.py")


def _load_default_module():
  if not DEFAULT_CONFIG_PATH.is_file():
    raise ImportError(
        f"{DEFAULT_CONFIG_PATH} not found: ban_jax reads its config schema "
        "from configs/default.py beside the ban_jax package. Install ban_jax "
        "from the repository (pip install -e . installs both).")
  spec = importlib.util.spec_from_file_location("ban_jax._default_config",
                                                DEFAULT_CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_DEFAULT = _load_default_module()


def defaults() -> ml_collections.ConfigDict:
  """A fresh copy of configs/default.py's config."""
  return _DEFAULT.get_config()


def flat_fields(config, prefix: str = "") -> dict[str, Any]:
  """Dotted field name -> value, of a ConfigDict or a nested dict."""
  flat = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      flat.update(flat_fields(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def seed_list(config) -> list[int]:
  """The seeds to run the chain with: config.seeds, else config.seed."""
  return list(config.seeds) or [config.seed]


# Every field some part of ban_jax reads. A field that is not here but is
# close to one that is, is a typo (validation.check_fields).
KNOWN_FIELDS = tuple(flat_fields(defaults()))
# Fields that may change between reruns of one workdir (see
# configs/default.py); pipeline compares the others with config.json.
RERUN_SAFE_FIELDS = tuple(_DEFAULT.RERUN_SAFE_FIELDS)


def missing_fields(config) -> list[str]:
  """The schema's fields that `config` does not set, in schema order."""
  present = set(flat_fields(config)) if hasattr(config, "items") else set()
  return [field for field in KNOWN_FIELDS if field not in present]


def describe_missing(missing: list[str]) -> str:
  """`data (the whole block: data.name, ...), num_epochs`: a whole missing
  block is named once, so a lost block is one short phrase, not 9 lines."""
  blocks = {}
  for field in missing:
    blocks.setdefault(field.partition(".")[0], []).append(field)
  parts = []
  for block, fields in blocks.items():
    whole = [f for f in KNOWN_FIELDS if f.startswith(block + ".")]
    if fields == [block]:
      parts.append(block)
    elif fields == whole:
      parts.append(f"{block} (the whole block: {', '.join(fields)})")
    else:
      parts.extend(fields)
  return ", ".join(parts)


_TYPE_NAMES = {bool: "True or False", int: "an integer", float: "a number",
               str: "a string", tuple: "a tuple"}


def _has_type(value, kind: type) -> bool:
  """isinstance, where a bool is no number and an int is a float."""
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if kind is int:
    return isinstance(value, numbers.Integral)
  if kind is float:
    return isinstance(value, numbers.Real)
  return isinstance(value, kind)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field may hold: a type and, for numbers, a range.

  The bounds apply to a number, or to each item of a tuple of `items`.
  Floats must also be finite. A rule says nothing about what a check in
  validation.py reads (e.g. `seeds`' items): each thing is checked once.
  """
  # bool, int, float (an int is taken too), str or tuple.
  kind: type
  # The type of a tuple's items, when this rule checks them.
  items: type | None = None
  # value >= minimum.
  minimum: float | None = None
  # value > 0.
  positive: bool = False
  # value < below.
  below: float | None = None
  # A tuple's items must increase strictly (a repeat would be lost).
  increasing: bool = False
  # The valid values, and what they are called in the message.
  choices: tuple[str, ...] = ()
  what: str = ""
  # The range as the message says it, when the bounds do not say it all.
  expected: str = ""
  # A valid value, shown in the message of a tuple.
  example: str = ""

  def _range(self) -> str:
    """The bounds in words: 'positive', '>= 0', 'in [0, 1)'."""
    if self.expected:
      return self.expected
    if self.positive:
      return "positive"
    if self.minimum is not None and self.below is not None:
      return f"in [{self.minimum:g}, {self.below:g})"
    if self.minimum is not None:
      return f">= {self.minimum:g}"
    if self.below is not None:
      return f"< {self.below:g}"
    return ""

  def _in_range(self, value) -> bool:
    return ((self.minimum is None or value >= self.minimum)
            and (not self.positive or value > 0)
            and (self.below is None or value < self.below))

  def problem(self, field: str, value) -> str | None:
    """What is wrong with `value` for config.`field`, or None."""
    name = f"config.{field}"
    if self.kind is tuple and self.items is not None:
      return self._tuple_problem(name, value)
    if not _has_type(value, self.kind):
      return f"{name} must be {_TYPE_NAMES[self.kind]}, got {value!r}."
    if self.choices and value not in self.choices:
      return (f"Unknown {self.what} ({name}) {value!r}. Valid choices: "
              f"{', '.join(self.choices)}.")
    if self.kind is float and not math.isfinite(value):
      return f"{name} must be finite, got {value!r}."
    if self.kind in (int, float) and not self._in_range(value):
      return f"{name} must be {self._range()}, got {value!r}."
    return None

  def _tuple_problem(self, name: str, value) -> str | None:
    items = value if isinstance(value, tuple) else None
    if items is not None and all(
        _has_type(x, self.items)
        and (self.items is not float or math.isfinite(x))
        and self._in_range(x) for x in items) and (
            not self.increasing
            or all(a < b for a, b in zip(items, items[1:]))):
      return None
    # One message for any of it: the whole expected form, with an example.
    # (A command-line value that is not a Python literal, such as '(abc,)',
    # reaches the config as a string.)
    plural = {int: "integers", float: "numbers"}[self.items]
    form = " ".join(filter(None, ["a tuple of",
                                  "increasing" if self.increasing else "",
                                  plural, self._range()]))
    example = f", e.g. {self.example}" if self.example else ""
    return f"{name} must be {form}{example}; got {value!r}."


_POSITIVE_INT = Rule(int, positive=True)
_NON_NEGATIVE = Rule(float, minimum=0)
_FRACTION = Rule(float, minimum=0, below=1)
_TEXT = Rule(str)
# config.seed_scope: what each seed trains. chain: its own teacher and
# students; students: only students, taught by the first seed's teacher.
SEED_SCOPES = ("chain", "students")

# The rule of every field of configs/default.py (and of no other field).
RULES = {
    # Its range: validation._seeds, over the seeds that run.
    "seed": Rule(int),
    # Its items: validation._seeds (non-negative integers, no repeats).
    "seeds": Rule(tuple),
    "seed_scope": Rule(str, choices=SEED_SCOPES, what="seed scope"),
    # Its upper bound, the number of seeds: validation._parallel_seeds.
    "parallel_seeds": _POSITIVE_INT,
    "num_generations": Rule(int, minimum=1, expected=(
        ">= 1 (a teacher and at least one born-again generation)")),
    # Its items: validation._ensembles (2..num_generations, no repeats).
    "ensemble_sizes": Rule(tuple),
    # Its value: validation._paper_row (a key of paper_results.ROWS).
    "paper_row": _TEXT,
    "data.name": Rule(str, choices=DATASET_NAMES, what="dataset"),
    "data.augment": Rule(bool),
    # Its upper bound, the image side: validation._crop_padding.
    "data.crop_padding": Rule(int, minimum=0),
    "data.source": Rule(str, choices=DATA_SOURCES, what="data source"),
    "data.data_dir": _TEXT,
    "data.archive_path": _TEXT,
    "data.max_train_examples": Rule(int, minimum=0, expected=">= 0 (0: all)"),
    "data.max_test_examples": Rule(int, minimum=0, expected=">= 0 (0: all)"),
    # Its value: validation._model and the trace on the dataset's shape.
    "model.name": _TEXT,
    "model.dropout_rate": _FRACTION,
    # Its value: validation._dtype (models.common.resolve_dtype's names).
    "model.dtype": _TEXT,
    "model.layers_per_scan": _POSITIVE_INT,
    # Its value: as model.name's, when set.
    "student_model": _TEXT,
    "student_dropout_rate": Rule(float, below=1, expected=(
        "in [0, 1), or negative for model.dropout_rate")),
    "share_stem_classifier": Rule(bool),
    "student_baseline": Rule(bool),
    "distill.loss": Rule(str, choices=DISTILL_LOSSES,
                         what="distillation loss"),
    "distill.temperature": Rule(float, positive=True),
    "distill.label_weight": _NON_NEGATIVE,
    "distill.teacher_weight": _NON_NEGATIVE,
    "distill.dkpp_keep_argmax": Rule(bool),
    "distill.dkpp_permutation": Rule(str, choices=("example", "step"),
                                     what="DKPP permutation"),
    "distill.attention_weight": _NON_NEGATIVE,
    "distill.fsp_weight": _NON_NEGATIVE,
    "optim.learning_rate": Rule(float, positive=True),
    "optim.momentum": _FRACTION,
    "optim.nesterov": Rule(bool),
    "optim.weight_decay": _NON_NEGATIVE,
    # An epoch < 1 would decay the rate from the first step; a repeated one
    # would decay once, not twice.
    "optim.lr_decay_epochs": Rule(tuple, items=int, minimum=1,
                                  increasing=True, expected=">= 1",
                                  example="(60, 120, 160)"),
    "optim.lr_decay_factor": Rule(float, positive=True),
    "num_epochs": _POSITIVE_INT,
    # Divisible by the devices: validation._divisible_by_devices; no larger
    # than the train split: validation.check_batch_fits, once it is loaded.
    "batch_size": _POSITIVE_INT,
    "eval_batch_size": _POSITIVE_INT,
    "eval_every_epochs": _POSITIVE_INT,
    "checkpoint_every_steps": Rule(int, minimum=0, expected=(
        ">= 0 (0: only at epoch ends)")),
    "steps_per_call": _POSITIVE_INT,
    # Its value: validation._xla_options (format, then XLA itself).
    "xla_options": _TEXT,
    "compilation_cache_dir": _TEXT,
}
