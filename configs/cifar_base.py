"""The paper's CIFAR rows, shared by configs/cifar10.py and cifar100.py.

Training settings are configs/default.py's, the Wide-ResNet recipe that
the paper's training settings point to: SGD with Nesterov momentum 0.9, lr
0.1 x0.2 at epochs 60, 120 and 160 of 200, batch 128, weight decay 5e-4,
dropout 0.3 inside Wide-ResNet blocks, 4-pixel reflect-padded random crop
and horizontal flip, per-channel mean/std normalisation; three born-again
generations, BAN (teacher cross-entropy, T = 1). This file sets the dataset
and what the config argument chooses.

The config argument (after the file name and a colon) is a comma-separated
list of `key=value` settings and flags:

  model=NAME        generation 0's network (default wrn28_10)
  student=NAME      network of generations >= 1 (default: same as model)
  loss=NAME         ce, kd, kd+label, cwtm or dkpp (default kd)
  generations=G     born-again generations after the teacher (default 3)
  seeds=0/1/2       seeds to run the chain with (default 0)
  share             copy the teacher's stem and classifier, frozen, and
                    train the student from labels alone as well (Table 5's
                    Baseline column; --config.student_baseline=False: not)
  smoke             a tiny model on a few hundred images for 1 epoch: the
                    whole chain in about a minute on CPU (tests use it)

e.g. `--config=configs/cifar100.py:model=densenet112_33,loss=cwtm`.
"""

import ml_collections

from ban_jax.reporting import paper_results
from configs import default

_KEYS = ("model", "student", "loss", "generations", "seeds")
_FLAGS = ("share", "smoke")
# The form of the settings that hold integers, for their error message.
_INTEGER_FORMS = {"generations": "an integer, e.g. generations=2",
                  "seeds": "integers separated by '/', e.g. seeds=0/1/2"}


def parse_argument(argument: str | None) -> dict[str, str | bool]:
  """'model=x,smoke' -> {'model': 'x', 'smoke': True}, checked."""
  settings = {}
  for item in filter(None, (argument or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key in _FLAGS and not has_value:
      settings[key] = True
    elif key in _KEYS and has_value:
      settings[key] = value.strip()
      if key in _INTEGER_FORMS:
        _check_integers(key, settings[key])
    else:
      raise ValueError(
          f"Unknown config argument {item!r}. Valid: "
          + ", ".join([f"{k}=..." for k in _KEYS] + list(_FLAGS)) + ".")
  return settings


def _check_integers(key: str, value: str) -> None:
  """A clear error for 'generations=x', not int()'s bare ValueError."""
  try:
    for part in value.split("/") if key == "seeds" else [value]:
      int(part)
  except ValueError:
    raise ValueError(f"Config argument '{key}={value}': use "
                     f"{_INTEGER_FORMS[key]}.") from None


def dropout_for(model_name: str) -> float:
  # The WRN recipe's dropout; DenseNets and ResNets train without it.
  return 0.3 if model_name.startswith("wrn") else 0.0


def cifar_config(dataset: str, argument: str | None
                 ) -> ml_collections.ConfigDict:
  """The paper's CIFAR settings for `dataset`, adjusted by `argument`."""
  settings = parse_argument(argument)
  config = default.get_config()  # The paper's recipe; its choices below.

  config.data.name = dataset
  config.model.name = settings.get("model", config.model.name)
  config.model.dropout_rate = dropout_for(config.model.name)
  config.student_model = settings.get("student", "")
  config.student_dropout_rate = dropout_for(
      config.student_model or config.model.name)
  config.share_stem_classifier = bool(settings.get("share", False))
  # Table 5 compares BAN with this labels-only student: same run.
  config.student_baseline = config.share_stem_classifier
  config.distill.loss = settings.get("loss", config.distill.loss)
  config.num_generations = int(settings.get("generations",
                                            config.num_generations))
  if "seeds" in settings:
    config.seeds = tuple(int(s) for s in settings["seeds"].split("/"))

  # The paper's row for these settings (results.md shows its numbers).
  config.paper_row = paper_results.find(
      dataset, config.model.name, config.student_model, config.distill.loss,
      config.share_stem_classifier) or ""

  if settings.get("smoke"):
    config.model.name = settings.get("model", "wrn10_1")
    config.model.dropout_rate = 0.0
    config.student_dropout_rate = 0.0
    config.data.max_train_examples = 256
    config.data.max_test_examples = 128
    # On a CPU, several steps per call are unrolled: slower to compile.
    config.steps_per_call = 1
    config.num_epochs = 1
    config.optim.lr_decay_epochs = ()
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_generations = int(settings.get("generations", 2))
    config.paper_row = ""  # A smoke run reproduces nothing.
  return config
