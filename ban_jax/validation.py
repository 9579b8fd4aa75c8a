"""Checks a config before any compute, with one clear message per problem.

`validate` is the first thing `pipeline.run` does: a day-long chain should
not fail at generation 3 on something a glance at the config could tell. It
checks, in order: field names (`check_fields`), names (dataset, models,
loss, paper row), values (positive rates and counts, seeds, ensembles no
larger than the chain, batches divisible by the devices), and whether the
models can take the dataset at all, by tracing them abstractly on its image
shape (`jax.eval_shape`: shapes only, no compute).

Misspelt fields on the command line are caught by the locked ConfigDict of
`ml_collections.config_flags` (see main.py); `check_fields` catches them in
configs built in Python, where a typo silently adds a new field.
"""

import difflib
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from ban_jax import feature_losses
from ban_jax import losses
from ban_jax import models
from ban_jax.data import DATA_SOURCES
from ban_jax.data import DATASET_NAMES
from ban_jax.data import DATASET_SHAPES
from ban_jax.errors import ConfigError
from ban_jax.models import common
from ban_jax.reporting import paper_results
from ban_jax.runtime import compilation


# Every field some part of ban_jax reads (configs/digits.py and
# configs/cifar_base.py). A field that is not here but is close to one that
# is, is a typo; add new fields here when you add them to a config.
KNOWN_FIELDS = (
    "seed", "seeds", "seed_scope", "num_generations", "ensemble_sizes",
    "paper_row",
    "data.name", "data.augment", "data.crop_padding", "data.source",
    "data.data_dir", "data.archive_path", "data.max_train_examples",
    "data.max_test_examples",
    "model.name", "model.dropout_rate", "model.dtype", "student_model",
    "student_dropout_rate", "share_stem_classifier", "student_baseline",
    "distill.loss", "distill.temperature", "distill.label_weight",
    "distill.teacher_weight", "distill.dkpp_keep_argmax",
    "distill.dkpp_permutation",
    "distill.attention_weight", "distill.fsp_weight",
    "optim.learning_rate", "optim.momentum", "optim.nesterov",
    "optim.weight_decay", "optim.lr_decay_epochs", "optim.lr_decay_factor",
    "num_epochs", "batch_size", "eval_batch_size", "eval_every_epochs",
    "checkpoint_every_steps", "steps_per_call", "xla_options",
    "compilation_cache_dir",
)

# config.seed_scope: what each seed trains. chain: its own teacher and
# students; students: only students, taught by the first seed's teacher.
SEED_SCOPES = ("chain", "students")

# Image side at which a model's total downsampling is measured: a power of
# two large enough that every stride divides it.
_REFERENCE_SIDE = 1024


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
  return list(config.get("seeds", ()) or ()) or [config.seed]


def _is_int(value) -> bool:
  """An int, and not a bool (which Python counts as one)."""
  return isinstance(value, int) and not isinstance(value, bool)


def check_fields(config, known=KNOWN_FIELDS) -> None:
  """Fails on a field that looks like a misspelling of a known one.

  A field that is unknown but close to no known field may be someone's new
  setting: it gets a warning, not an error.
  """
  for path in flat_fields(config):
    if path in known:
      continue
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
    if close:
      raise ConfigError(
          f"config.{path} is not a field; did you mean config.{close[0]}? "
          "(Setting a misspelt field on a ConfigDict adds a new field "
          "instead of changing the real one.)")
    logging.warning("config.%s is not a field ban_jax knows; it is ignored "
                    "unless some code reads it (see validation.KNOWN_FIELDS).",
                    path)


def _choice(what: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"Unknown {what} {value!r}. Valid choices: "
                      f"{', '.join(map(str, valid))}.")


def _positive(name: str, value) -> None:
  if not value > 0:
    raise ConfigError(f"config.{name} must be positive, got {value!r}.")


def _in_range(name: str, value, low, high, what: str) -> None:
  if not low <= value < high:
    raise ConfigError(f"config.{name} must be {what}, got {value!r}.")


def _model(name: str, field: str) -> None:
  try:
    models.get_model(name, num_classes=10)
  except ValueError as e:
    raise ConfigError(f"config.{field}: {e}") from None


def _crop_padding(config) -> None:
  """A random crop pads by `crop_padding`; it must be less than the side."""
  if not config.data.get("augment", False):
    return
  pad = config.data.crop_padding
  shape = DATASET_SHAPES.get(config.data.name)
  side = min(shape[0][:2]) if shape else float("inf")
  if not _is_int(pad) or not 0 <= pad < side:
    raise ConfigError(
        f"config.data.crop_padding={pad!r}: the random crop pads each side by "
        f"this many pixels, so it must be an integer in [0, {side}) for "
        f"{config.data.name}; or set config.data.augment=False.")


def check_batch_fits(config, num_train: int) -> None:
  """The train batch must fit in the (global) train split."""
  if config.batch_size > num_train:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is larger than the "
        f"{num_train} training examples of {config.data.name}; use at most "
        f"{num_train}.")


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
  seeds = seed_list(config)
  for seed in seeds:
    if not _is_int(seed) or seed < 0:
      raise ConfigError(
          f"Seeds must be non-negative integers, got {seed!r} in "
          f"config.seeds={tuple(config.get('seeds', ()))} / "
          f"config.seed={config.seed!r}.")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"config.seeds={tuple(seeds)} repeats a seed; each "
                      "seed runs (and is stored) once.")


def _paper_row(config) -> None:
  key = config.get("paper_row", "")
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


def _trace(name: str, field: str, config, image_shape, num_classes: int,
           dataset: str):
  """Abstract init + forward of a model: (params, intermediates) shapes."""
  module = models.get_model(name, num_classes, dtype=config.model.dtype)

  def forward(images):
    rng = jax.random.key(0)
    variables = module.init({"params": rng, "dropout": rng}, images,
                            train=False)
    logits, sown = module.apply(variables, images, train=False,
                                mutable=["intermediates"])
    return variables["params"], logits, sown.get("intermediates", {})

  def shapes(side_shape):
    return jax.eval_shape(
        forward, jax.ShapeDtypeStruct((2,) + side_shape, jnp.float32))

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
  if distill.get("attention_weight", 0) or distill.get("fsp_weight", 0):
    try:
      jax.eval_shape(
          lambda s, t: feature_losses.weighted_feature_loss(distill, s, t),
          student_sown, teacher_sown)
    except ValueError as e:
      raise ConfigError(
          "config.distill.attention_weight / fsp_weight: the feature terms "
          f"between {config.model.name} (teacher) and {student} (student) "
          f"cannot be computed: {e}") from None


def validate(config) -> None:
  """Raises ConfigError on the first value that cannot work."""
  check_fields(config)
  _choice("dataset (config.data.name)", config.data.name, DATASET_NAMES)
  _choice("data source (config.data.source)",
          config.data.get("source", "auto") or "auto", DATA_SOURCES)
  _crop_padding(config)
  try:
    common.resolve_dtype(config.model.dtype)
  except ValueError as e:
    raise ConfigError(f"config.model.dtype: {e}") from None
  _model(config.model.name, "model.name")
  if config.student_model:
    _model(config.student_model, "student_model")
  _choice("distillation loss (config.distill.loss)", config.distill.loss,
          losses.DISTILL_LOSSES)
  _choice("DKPP permutation (config.distill.dkpp_permutation)",
          config.distill.get("dkpp_permutation", "example"),
          losses.DKPP_PERMUTATIONS)
  _paper_row(config)
  _positive("optim.learning_rate", config.optim.learning_rate)
  _positive("optim.lr_decay_factor", config.optim.lr_decay_factor)
  _in_range("optim.momentum", config.optim.momentum, 0, 1, "in [0, 1)")
  _in_range("optim.weight_decay", config.optim.weight_decay, 0,
            float("inf"), ">= 0")
  _in_range("model.dropout_rate", config.model.dropout_rate, 0, 1,
            "in [0, 1)")
  if config.get("student_dropout_rate", -1) >= 0:
    _in_range("student_dropout_rate", config.student_dropout_rate, 0, 1,
              "in [0, 1), or negative for model.dropout_rate")
  _positive("num_epochs", config.num_epochs)
  _positive("batch_size", config.batch_size)
  _positive("eval_batch_size", config.eval_batch_size)
  _positive("eval_every_epochs", config.eval_every_epochs)
  _positive("steps_per_call", config.steps_per_call)
  _xla_options(config.get("xla_options", ""))
  _in_range("checkpoint_every_steps", config.checkpoint_every_steps, 0,
            float("inf"), ">= 0 (0: only at epoch ends)")
  _positive("distill.temperature", config.distill.temperature)
  _seeds(config)
  # One seed: the first seed's teacher is its own, as with "chain".
  _choice("seed scope (config.seed_scope)",
          config.get("seed_scope", "chain"), SEED_SCOPES)
  if config.num_generations < 1:
    raise ConfigError(
        f"config.num_generations must be >= 1 (a teacher and at least one "
        f"born-again generation), got {config.num_generations}.")
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
  num_devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % num_devices:
      raise ConfigError(
          f"config.{field}={config[field]} is not divisible by the "
          f"{num_devices} devices; use a multiple of {num_devices}.")
  _models_take_the_dataset(config)
