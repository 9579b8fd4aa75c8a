"""Checks a config before any compute, and reports every problem at once.

`validate` is the first thing `pipeline.run` does: a day-long chain should
not fail at generation 3 on something a glance at the config could tell.
It checks field names (`check_fields`), each field's type and range
(`config_schema.RULES`), then what needs several fields or the library:
model names, the paper row, seeds, ensembles no larger than the chain,
batches divisible by the devices, XLA options, and whether the models can
take the dataset at all, by tracing them abstractly on its image shape
(`jax.eval_shape`: shapes only, no compute). A check is skipped when a
field it reads has a problem already, so that each problem is told once;
all of them come in one ConfigError, one line each.

Misspelt fields on the command line are caught by the locked ConfigDict of
`ml_collections.config_flags` (see main.py); `check_fields` catches them in
configs built in Python, where a typo silently adds a new field.
"""

import difflib
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import logging

from ban_jax import config_schema
from ban_jax import feature_losses
from ban_jax import models
from ban_jax.data import DATASET_SHAPES
from ban_jax.errors import ConfigError
from ban_jax.models import common
from ban_jax.reporting import paper_results
from ban_jax.runtime import compilation

# Image side at which a model's total downsampling is measured: a power of
# two large enough that every stride divides it.
_REFERENCE_SIDE = 1024


def _is_int(value) -> bool:
  """An int, and not a bool (which Python counts as one)."""
  return isinstance(value, int) and not isinstance(value, bool)


def _field_name_problems(config,
                         known=config_schema.KNOWN_FIELDS) -> list[str]:
  """A message per field that looks like a misspelling of a known one.

  A field that is unknown but close to no known field may be someone's new
  setting: it gets a warning, not an error.
  """
  problems = []
  for path in config_schema.flat_fields(config):
    if path in known:
      continue
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
    if close:
      problems.append(
          f"config.{path} is not a field; did you mean config.{close[0]}? "
          "(Setting a misspelt field on a ConfigDict adds a new field "
          "instead of changing the real one.)")
    else:
      logging.warning("config.%s is not a field ban_jax knows; it is ignored "
                      "unless some code reads it (see configs/default.py).",
                      path)
  return problems


def check_fields(config, known=config_schema.KNOWN_FIELDS) -> None:
  """Fails on fields that look like misspellings of known ones."""
  _raise(_field_name_problems(config, known))


def _rule_problems(config) -> dict[str, str]:
  """Field -> what is wrong with it, by `config_schema.RULES`."""
  flat = config_schema.flat_fields(config)
  problems = {}
  missing = config_schema.missing_fields(config)
  if missing:
    # One line for all of them, keyed by the first; the others are marked
    # failed too (empty), so that no check reads them.
    problems = dict.fromkeys(missing, "")
    problems[missing[0]] = (
        f"The config lacks {config_schema.describe_missing(missing)}. Start "
        "it from configs/default.py's get_config(), which has every field.")
  for field, rule in config_schema.RULES.items():
    if field in missing:
      continue
    problem = rule.problem(field, flat[field])
    if problem:
      problems[field] = problem
  return problems


def _model(name: str, field: str) -> None:
  try:
    models.get_model(name, num_classes=10)
  except ValueError as e:
    raise ConfigError(f"config.{field}: {e}") from None


def _student_model(config) -> None:
  if config.student_model:
    _model(config.student_model, "student_model")


def _dtype(config) -> None:
  try:
    common.resolve_dtype(config.model.dtype)
  except ValueError as e:
    raise ConfigError(f"config.model.dtype: {e}") from None


def _crop_padding(config) -> None:
  """A random crop pads by `crop_padding`; it must be less than the side."""
  if not config.data.augment:
    return
  pad = config.data.crop_padding
  shape = DATASET_SHAPES.get(config.data.name)
  side = min(shape[0][:2]) if shape else float("inf")
  if pad >= side:  # Its type and `>= 0`: config_schema.RULES.
    raise ConfigError(
        f"config.data.crop_padding={pad!r}: the random crop pads each side by "
        f"this many pixels, so it must be an integer in [0, {side}) for "
        f"{config.data.name}; or set config.data.augment=False.")


def check_batch_fits(config, num_train: int) -> None:
  """The train batch must fit in the (global) train split.

  Checked once the data is loaded (by `pipeline.run`): only then is the
  split's size known. `train.GenerationTrainer` relies on it.
  """
  if config.batch_size > num_train:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is larger than the "
        f"{num_train} training examples of {config.data.name}; use at most "
        f"{num_train}.")


def _divisible_by_devices(field: str, num_devices: int
                          ) -> Callable[..., None]:
  """A check that config.`field` splits evenly over the run's devices.

  The one place this is checked: `train` assumes it (an assert there only
  guards callers that build their own mesh).
  """
  def check(config) -> None:
    if config[field] % num_devices:
      raise ConfigError(
          f"config.{field}={config[field]} is not divisible by the "
          f"{num_devices} devices; use a multiple of {num_devices}.")
  return check


def _xla_options(text: str) -> None:
  """Format, names and values, checked by compiling a trivial program."""
  try:
    options = compilation.xla_compiler_options(text)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not options:
    return
  try:
    jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    # XLA says which option or value it refused.
    raise ConfigError(
        f"xla_options={text!r} was refused by XLA: {e}. Fix or drop that "
        "item (XLA_FLAGS takes the same names with a leading '--').") from None


def _seeds(config) -> None:
  seeds = config_schema.seed_list(config)
  for seed in seeds:
    if not _is_int(seed) or seed < 0:
      raise ConfigError(
          f"Seeds must be non-negative integers, got {seed!r} in "
          f"config.seeds={tuple(config.seeds)} / "
          f"config.seed={config.seed!r}.")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"config.seeds={tuple(seeds)} repeats a seed; each "
                      "seed runs (and is stored) once.")


def _parallel_seeds(config) -> None:
  """At most as many seeds side by side as run."""
  seeds = config_schema.seed_list(config)
  if config.parallel_seeds > len(seeds):
    raise ConfigError(
        f"config.parallel_seeds={config.parallel_seeds} is more than the "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} that run "
        f"(config.seeds={tuple(config.seeds)}); use at most {len(seeds)}.")


def _ensembles(config) -> None:
  for size in config.ensemble_sizes:
    # A float (2.0) would pass the range check and fail only once the whole
    # chain has trained, slicing the generations.
    if not _is_int(size) or not 2 <= size <= config.num_generations:
      raise ConfigError(
          f"config.ensemble_sizes has {size!r}: an ensemble Ens*k averages "
          f"generations 1..k, so k must be an integer in 2..num_generations="
          f"{config.num_generations}.")
  if len(set(config.ensemble_sizes)) != len(config.ensemble_sizes):
    raise ConfigError(
        f"config.ensemble_sizes={tuple(config.ensemble_sizes)} repeats a "
        "size; list each Ens*k once.")


def _paper_row(config) -> None:
  key = config.paper_row
  if not key:
    return
  try:
    row = paper_results.get(key)
  except KeyError as e:
    raise ConfigError(f"config.paper_row: {e.args[0]}") from None
  capped = paper_results.is_capped(config)
  for mismatch in paper_results.mismatches(row, config):
    logging.warning("config.paper_row=%s: this run's %s; %s", key, mismatch,
                    "a run on a subset of the data gets no paper numbers."
                    if capped else "the report lists it under the paper's "
                    "numbers.")


@functools.lru_cache(maxsize=64)
def _shapes(module, image_shape: tuple[int, int, int]):
  """Shapes of `module`'s (params, logits, intermediates) on two images.

  One abstract trace of init, which runs the forward pass and keeps what it
  sows (`mutable=True`). Cached by the module (Linen modules compare by
  their fields): a process that validates several configs (a notebook, a
  sweep, the tests) traces each network once.
  """

  def forward(images):
    rng = jax.random.key(0)
    logits, variables = module.init_with_output(
        {"params": rng, "dropout": rng}, images, train=False, mutable=True)
    return variables["params"], logits, variables.get("intermediates", {})

  return jax.eval_shape(
      forward, jax.ShapeDtypeStruct((2,) + image_shape, jnp.float32))


def _trace(name: str, field: str, config, image_shape, num_classes: int,
           dataset: str):
  """Abstract init + forward of a model: (params, intermediates) shapes."""
  module = models.get_model(name, num_classes, dtype=config.model.dtype)

  def shapes(side_shape):
    return _shapes(module, tuple(side_shape))

  height, width, channels = image_shape
  try:
    params, logits, sown = shapes(image_shape)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"config.{field}={name!r} cannot take {dataset}'s {height}x{width}x"
        f"{channels} images: {type(e).__name__}: {e}") from None
  if logits.shape != (2, num_classes):
    raise ConfigError(
        f"config.{field}={name!r} gives outputs of shape {logits.shape[1:]} "
        f"on {dataset}, which has {num_classes} classes.")
  # A stride larger than what is left of the image does not downsample: the
  # network that runs is not the one named. Measured on a large image.
  if _last_stage_side(sown):
    _, _, big = shapes((_REFERENCE_SIDE, _REFERENCE_SIDE, channels))
    stride = _REFERENCE_SIDE // _last_stage_side(big)
    if min(height, width) < stride:
      raise ConfigError(
          f"config.{field}={name!r} downsamples by {stride}, more than "
          f"{dataset}'s {height}x{width} images allow; pick a model with "
          "fewer strided stages.")
  return params, sown


def _last_stage_side(sown) -> int | None:
  """Smaller spatial side of the last stage's output (None: none sown)."""
  if not sown:
    return None
  _, outputs = feature_losses.stage_features(sown)
  return min(outputs[-1].shape[1:3]) if outputs else None


def _models_take_the_dataset(config) -> None:
  """Traces generation 0's model and the students' on the dataset's shape."""
  dataset = config.data.name
  if dataset not in DATASET_SHAPES:
    return  # A dataset added without its shape here: checked when loaded.
  image_shape, num_classes = DATASET_SHAPES[dataset]
  teacher_params, teacher_sown = _trace(
      config.model.name, "model.name", config, image_shape, num_classes,
      dataset)
  student = config.student_model
  if not student or student == config.model.name:
    return
  student_params, student_sown = _trace(
      student, "student_model", config, image_shape, num_classes, dataset)
  if config.share_stem_classifier:
    for layer in ("stem", "classifier"):
      shapes = [jax.tree.map(lambda x: x.shape, p.get(layer))
                for p in (teacher_params, student_params)]
      if None in shapes or shapes[0] != shapes[1]:
        raise ConfigError(
            f"config.share_stem_classifier: {config.model.name}'s {layer} "
            f"has shapes {shapes[0]} but {student}'s has {shapes[1]}; pick a "
            "student whose first conv and classifier match the teacher's, "
            "or set config.share_stem_classifier=False.")
  distill = config.distill
  if distill.attention_weight or distill.fsp_weight:
    try:
      jax.eval_shape(
          lambda s, t: feature_losses.weighted_feature_loss(distill, s, t),
          student_sown, teacher_sown)
    except ValueError as e:
      raise ConfigError(
          "config.distill.attention_weight / fsp_weight: the feature terms "
          f"between {config.model.name} (teacher) and {student} (student) "
          f"cannot be computed: {e}") from None


def _raise(problems: list[str]) -> None:
  """One ConfigError for all `problems`: one line each (and the lines of
  a longer one, such as the list of model names, indented below it)."""
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(
        f"The config has {len(problems)} problems:\n" + "\n".join(
            "  " + p.replace("\n", "\n    ") for p in problems))


def _checks(num_devices: int) -> tuple[Any, ...]:
  """The checks beyond one field's rule, in order, for a run on
  `num_devices` devices: (the fields a failure is about, the other fields
  the check reads, the check). A check runs only if all of these passed
  their rules and earlier checks, so that each problem is told once, by
  the check closest to it."""
  return (
      (("model.dtype",), (), _dtype),
      (("model.name",), (), lambda config: _model(config.model.name,
                                                  "model.name")),
      (("student_model",), (), _student_model),
      (("data.crop_padding",), ("data.name", "data.augment"), _crop_padding),
      (("paper_row",), ("data.name", "model.name", "student_model",
                        "distill.loss", "share_stem_classifier"), _paper_row),
      (("seeds",), ("seed",), _seeds),
      (("parallel_seeds",), ("seeds", "seed"), _parallel_seeds),
      (("ensemble_sizes",), ("num_generations",), _ensembles),
      (("batch_size",), (), _divisible_by_devices("batch_size", num_devices)),
      (("eval_batch_size",), (),
       _divisible_by_devices("eval_batch_size", num_devices)),
      (("xla_options",), (),
       lambda config: _xla_options(config.xla_options)),
      # Last: it traces the models (shapes only, but the slowest check).
      ((), ("data.name", "model.name", "model.dtype", "student_model",
            "share_stem_classifier", "distill.attention_weight",
            "distill.fsp_weight"), _models_take_the_dataset),
  )


def validate(config, num_devices: int | None = None) -> None:
  """Raises one ConfigError that lists every problem of `config`.

  Args:
    config: the run's config.
    num_devices: how many devices the run trains on (default: all of them,
      `jax.device_count()`).
  """
  num_devices = num_devices or jax.device_count()
  problems = _field_name_problems(config)
  by_field = _rule_problems(config)
  problems += [p for p in by_field.values() if p]
  failed = set(by_field)
  for about, reads, check in _checks(num_devices):
    if failed.intersection(about + reads):
      continue
    try:
      check(config)
    except ConfigError as e:
      problems.append(str(e))
      failed.update(about)
  _raise(problems)
