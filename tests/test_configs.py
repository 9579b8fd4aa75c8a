"""The shipped config files: every value, the argument and its errors.

The CIFAR values are the paper's (its training settings, the Wide-ResNet
recipe); the digits values made README's digits table. Each config is
compared whole, so that a changed or a new field is a decision taken here
as well. The schema (configs/default.py, with ban_jax/config_schema.py's
rules) is checked for a field declared in one place only.
"""

import pathlib
import re

import pytest

from ban_jax import config_schema
from configs import cifar10
from configs import cifar100
from configs import cifar_base
from configs import default
from configs import digits
from configs import digits_small

ROOT = pathlib.Path(__file__).parent.parent

# SGD, Nesterov momentum 0.9, lr 0.1 x0.2 at epochs 60, 120 and 160 of 200,
# batch 128, weight decay 5e-4, dropout 0.3 in WRN blocks, 4-pixel reflect
# crop + flip; BAN: the teacher's softmax at T = 1, three generations.
_PAPER = {
    "seed": 0,
    "seeds": (),
    "seed_scope": "chain",
    "parallel_seeds": 1,
    "num_generations": 3,
    "ensemble_sizes": (),
    "paper_row": "table3/wrn28_10/ban",
    "data": {"name": "cifar100", "augment": True, "crop_padding": 4,
             "source": "auto", "data_dir": "", "archive_path": "",
             "max_train_examples": 0, "max_test_examples": 0},
    "model": {"name": "wrn28_10", "dropout_rate": 0.3, "dtype": "auto",
              "layers_per_scan": 1},
    "student_model": "",
    "student_dropout_rate": 0.3,
    "share_stem_classifier": False,
    "student_baseline": False,
    "distill": {"loss": "kd", "temperature": 1.0, "label_weight": 1.0,
                "teacher_weight": 1.0, "dkpp_keep_argmax": False,
                "dkpp_permutation": "example", "attention_weight": 0.0,
                "fsp_weight": 0.0},
    "optim": {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
              "weight_decay": 5e-4, "lr_decay_epochs": (60, 120, 160),
              "lr_decay_factor": 0.2},
    "num_epochs": 200,
    "batch_size": 128,
    "eval_batch_size": 1000,
    "eval_every_epochs": 1,
    "checkpoint_every_steps": 0,
    "steps_per_call": 10,
    "xla_options": "",
    "compilation_cache_dir": "compile_cache",
}

_VALID = ("Valid: model=..., student=..., loss=..., generations=..., "
          "seeds=..., share, smoke.")


def _with(base, **changes):
  """A copy of `base` with `changes`; 'data__name' sets base['data']['name']."""
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
  for key, value in changes.items():
    if "__" in key:
      outer, inner = key.split("__")
      out[outer][inner] = value
    else:
      out[key] = value
  return out


def test_cifar_configs_are_the_papers_recipe():
  assert cifar100.get_config(None).to_dict() == _PAPER
  assert cifar100.get_config("").to_dict() == _PAPER
  assert cifar10.get_config(None).to_dict() == _with(
      _PAPER, data__name="cifar10", paper_row="table1/wrn28_10/ban")


def test_smoke_config_is_small_and_reproduces_no_row():
  small = {"model__name": "wrn10_1", "model__dropout_rate": 0.0,
           "student_dropout_rate": 0.0, "data__max_train_examples": 256,
           "data__max_test_examples": 128, "steps_per_call": 1,
           "num_epochs": 1, "optim__lr_decay_epochs": (), "batch_size": 32,
           "eval_batch_size": 64, "num_generations": 2, "paper_row": ""}
  assert cifar100.get_config("smoke").to_dict() == _with(_PAPER, **small)
  # The argument's own settings win over the smoke defaults.
  small.update(model__name="wrn28_1", num_generations=3, student_model="x")
  assert cifar100.get_config(
      "smoke,model=wrn28_1,generations=3,student=x").to_dict() == _with(
          _PAPER, **small)


@pytest.mark.parametrize("argument, settings", [
    (None, {}),
    ("", {}),
    # Spaces around names and values, and a trailing comma, are harmless.
    ("model=densenet90_60, loss = cwtm ,smoke,", {
        "model": "densenet90_60", "loss": "cwtm", "smoke": True}),
    ("student=wrn28_1,generations=1,seeds=0/1/2,share", {
        "student": "wrn28_1", "generations": "1", "seeds": "0/1/2",
        "share": True}),
])
def test_parse_argument(argument, settings):
  assert cifar_base.parse_argument(argument) == settings


def test_argument_sets_seeds_and_generations():
  config = cifar100.get_config("seeds=3/1/2,generations=1")
  assert config.seeds == (3, 1, 2) and config.num_generations == 1
  assert cifar100.get_config("seeds=5").seeds == (5,)


@pytest.mark.parametrize("argument, message", [
    ("modle=x", f"Unknown config argument 'modle=x'. {_VALID}"),
    # A flag takes no value (share=0 must not share), a setting needs one.
    ("share=0", f"Unknown config argument 'share=0'. {_VALID}"),
    ("smoke=1", f"Unknown config argument 'smoke=1'. {_VALID}"),
    ("model", f"Unknown config argument 'model'. {_VALID}"),
    ("seeds=0,1", f"Unknown config argument '1'. {_VALID}"),
    ("generations=x", "Config argument 'generations=x': use an integer, "
     "e.g. generations=2."),
    ("generations=", "Config argument 'generations=': use an integer, "
     "e.g. generations=2."),
    ("seeds=0/x", "Config argument 'seeds=0/x': use integers separated by "
     "'/', e.g. seeds=0/1/2."),
])
def test_bad_arguments_are_named(argument, message):
  with pytest.raises(ValueError) as error:
    cifar100.get_config(argument)
  assert str(error.value) == message


@pytest.mark.parametrize("argument, dropout, student_dropout", [
    ("model=wrn28_1", 0.3, 0.3),
    ("model=densenet90_60", 0.0, 0.0),
    # Table 3: each network takes its own recipe's dropout.
    ("model=wrn28_1,student=densenet90_60", 0.3, 0.0),
    ("model=densenet90_60,student=wrn28_1", 0.0, 0.3),
    # Table 5's residual students are not Wide-ResNet-28s: no dropout.
    ("model=densenet90_60,student=densewrn1_1,share", 0.0, 0.0),
])
def test_dropout_follows_each_network(argument, dropout, student_dropout):
  config = cifar100.get_config(argument)
  assert config.model.dropout_rate == dropout
  assert config.student_dropout_rate == student_dropout


def test_share_also_trains_the_baseline():
  # Every Table 5 command produces the paper's Baseline column too.
  config = cifar100.get_config("model=densenet90_60,student=densewrn1_1,share")
  assert config.share_stem_classifier and config.student_baseline
  assert config.paper_row == "table5/densenet90_60/densewrn1_1"
  assert not cifar100.get_config("model=densenet90_60").student_baseline


def test_digits_config_is_the_readme_job():
  assert digits.get_config().to_dict() == {
      "seed": 0,
      "seeds": (),
      "seed_scope": "chain",
      "parallel_seeds": 1,
      "num_generations": 3,
      "ensemble_sizes": (),
      "paper_row": "",
      "data": {"name": "digits", "augment": False, "crop_padding": 4,
               "source": "auto", "data_dir": "", "archive_path": "",
               "max_train_examples": 0, "max_test_examples": 0},
      "model": {"name": "wrn10_2", "dropout_rate": 0.0, "dtype": "auto",
                "layers_per_scan": 1},
      "student_model": "",
      "student_dropout_rate": -1.0,
      "share_stem_classifier": False,
      "student_baseline": False,
      "distill": _PAPER["distill"],
      "optim": {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True,
                "weight_decay": 5e-4, "lr_decay_epochs": (8, 12),
                "lr_decay_factor": 0.2},
      "num_epochs": 15,
      "batch_size": 64,
      "eval_batch_size": 128,
      "eval_every_epochs": 1,
      "checkpoint_every_steps": 0,
      "steps_per_call": 1,
      "xla_options": "",
      "compilation_cache_dir": "compile_cache",
  }
  assert digits.get_config("").num_generations == 3


def test_digits_small_is_the_digits_job_on_200_images():
  small = digits_small.get_config().to_dict()
  full = digits.get_config().to_dict()
  changed = {(outer, inner): (full[outer][inner], small[outer][inner])
             for outer in full if isinstance(full[outer], dict)
             for inner in full[outer]
             if full[outer][inner] != small[outer][inner]}
  changed.update({key: (full[key], small[key]) for key in full
                  if not isinstance(full[key], dict)
                  and full[key] != small[key]})
  # As many steps a generation as digits' 15 epochs of 21 (6 x 50 = 300),
  # the decays at about the same fractions (8/15, 12/15 of the epochs).
  assert changed == {("data", "max_train_examples"): (0, 200),
                     "batch_size": (64, 32), "num_epochs": (15, 50),
                     ("optim", "lr_decay_epochs"): ((8, 12), (27, 40))}
  with pytest.raises(ValueError, match="takes no argument"):
    digits_small.get_config("smoke")


def test_the_paper_recipe_is_the_default():
  # cifar100 with no argument adds only its paper row, and the students'
  # dropout spelt out (the default's -1 means the teacher's, 0.3 too).
  assert default.get_config().to_dict() == _with(
      _PAPER, paper_row="", student_dropout_rate=-1.0)


def test_every_field_has_a_rule_and_every_rule_a_field():
  assert set(config_schema.RULES) == set(config_schema.KNOWN_FIELDS)
  assert config_schema.KNOWN_FIELDS == tuple(
      config_schema.flat_fields(default.get_config()))


def test_rerun_safe_fields_are_fields():
  assert set(config_schema.RERUN_SAFE_FIELDS) <= set(
      config_schema.KNOWN_FIELDS)
  assert config_schema.RERUN_SAFE_FIELDS == default.RERUN_SAFE_FIELDS


@pytest.mark.parametrize("config", [
    default.get_config(), digits.get_config(), cifar10.get_config(""),
    cifar100.get_config("smoke"),
    cifar100.get_config("model=densenet90_60,student=densewrn1_1,share,"
                        "loss=cwtm,generations=2,seeds=0/1"),
], ids=["default", "digits", "cifar10", "cifar100_smoke", "cifar100_table5"])
def test_shipped_configs_have_the_default_fields_and_obey_the_rules(config):
  # A field added to a config but not to configs/default.py would be
  # unknown to validation and to the rerun check.
  flat = config_schema.flat_fields(config)
  assert tuple(sorted(flat)) == tuple(sorted(config_schema.KNOWN_FIELDS))
  for field, rule in config_schema.RULES.items():
    assert rule.problem(field, flat[field]) is None, field


def test_every_default_field_has_a_comment_above_it():
  lines = (ROOT / "configs" / "default.py").read_text().splitlines()
  assignments = [i for i, line in enumerate(lines)
                 if re.match(r"  config\.[\w.]+ = ", line)
                 and "ConfigDict()" not in line]
  assert len(assignments) == len(config_schema.KNOWN_FIELDS)
  for i in assignments:
    assert lines[i - 1].strip().startswith("#"), lines[i]


def test_no_library_code_repeats_a_default():
  # `config.get("field", default)` would be a second default, which the
  # schema would not see change; every config has every field.
  leaves = {field.rsplit(".", 1)[-1] for field in config_schema.KNOWN_FIELDS}
  pattern = re.compile(
      r"(\w*config\w*|\bdistill|\boptim|\bdata|\bmodel)"
      r"\.get\(\s*[\"'](\w+)[\"']")
  found = [f"{path.relative_to(ROOT)}: {match.group(0)}"
           for path in sorted((ROOT / "ban_jax").rglob("*.py"))
           for match in pattern.finditer(path.read_text())
           if match.group(2) in leaves]
  assert not found
