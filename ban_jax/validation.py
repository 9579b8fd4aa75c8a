"""Checks a config before any compute, with one clear message per problem.

Field-name typos are caught earlier by the locked ConfigDict of
`ml_collections.config_flags` (and by `check_fields` for configs built in
Python); this module checks names and values.
"""

import jax

from ban_jax import losses
from ban_jax import models
from ban_jax.data import DATASET_NAMES


class ConfigError(ValueError):
  """A config value that cannot work, with the way to fix it."""


def _choice(what: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"Unknown {what} {value!r}. Valid choices: "
                      f"{', '.join(map(str, valid))}.")


def _positive(name: str, value) -> None:
  if not value > 0:
    raise ConfigError(f"config.{name} must be positive, got {value!r}.")


def _model(name: str, field: str) -> None:
  try:
    models.get_model(name, num_classes=10)
  except ValueError as e:
    raise ConfigError(f"config.{field}: {e}") from None


def validate(config) -> None:
  """Raises ConfigError on the first value that cannot work."""
  _choice("dataset (config.data.name)", config.data.name, DATASET_NAMES)
  _model(config.model.name, "model.name")
  if config.student_model:
    _model(config.student_model, "student_model")
  _choice("distillation loss (config.distill.loss)", config.distill.loss,
          losses.DISTILL_LOSSES)
  _positive("optim.learning_rate", config.optim.learning_rate)
  _positive("num_epochs", config.num_epochs)
  _positive("batch_size", config.batch_size)
  _positive("eval_batch_size", config.eval_batch_size)
  _positive("eval_every_epochs", config.eval_every_epochs)
  _positive("distill.temperature", config.distill.temperature)
  if config.num_generations < 1:
    raise ConfigError(
        f"config.num_generations must be >= 1 (a teacher and at least one "
        f"born-again generation), got {config.num_generations}.")
  for size in config.ensemble_sizes:
    if not 2 <= size <= config.num_generations:
      raise ConfigError(
          f"config.ensemble_sizes has {size}: an ensemble Ens*k averages "
          f"generations 1..k, so k must be in 2..num_generations="
          f"{config.num_generations}.")
  num_devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % num_devices:
      raise ConfigError(
          f"config.{field}={config[field]} is not divisible by the "
          f"{num_devices} devices; use a multiple of {num_devices}.")
