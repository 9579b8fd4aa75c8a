"""The errors a user can fix, under one base class.

Every failure whose message says what went wrong and how to go on derives
from `UserError`: `main` prints such an error as one `ERROR:` line and exits
with status 1, without a traceback. Anything else is a bug and keeps its
traceback. This module imports nothing from ban_jax, so every layer can
raise these.
"""

import pickle


class UserError(Exception):
  """A failure the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work, with the way to fix it."""


class DataNotFoundError(UserError, FileNotFoundError):
  """The dataset is in none of the places the config points at."""


class UnreadableDataError(UserError, ValueError):
  """The data is there but cannot be read (a damaged or wrong archive, a
  TFDS format that needs TensorFlow); the message says how to fix it."""


class UnsafePickleError(UserError, pickle.UnpicklingError):
  """A CIFAR pickle asked for something other than numpy arrays."""


class WorkdirError(UserError):
  """The workdir cannot be used as asked (its settings, its files)."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced a NaN or infinite loss."""


class NonFiniteStateError(UserError, FloatingPointError):
  """A train state with NaN or infinite values was about to be saved."""


class CheckpointWriteError(UserError, OSError):
  """A checkpoint could not be written (a full disk, a quota, permissions).

  `main` exits at once on it: Orbax's background threads may otherwise hold
  the process for minutes (see main._exit_now).
  """
