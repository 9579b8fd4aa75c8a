"""validation.py: every config problem is one clear message before any compute."""

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from ban_jax import config_schema
from ban_jax import pipeline
from ban_jax import validation
from ban_jax.reporting import paper_results
from configs import default
from configs import digits
from tests import run_results

# Its programs run once, if at all: compiling is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

ROOT = pathlib.Path(__file__).parent.parent


def _error(config) -> str:
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  return str(error.value)


def _set(config, path: str, value):
  """`config` with `path` set to `value`, whatever the field's type (as a
  config built from a dict, or a plain dict, may have it)."""
  fields = config.to_dict()
  *parents, name = path.split(".")
  node = fields
  for parent in parents:
    node = node[parent]
  node[name] = value
  return ml_collections.ConfigDict(fields)


_DECAY_EPOCHS = ("config.optim.lr_decay_epochs must be a tuple of increasing "
                 "integers >= 1, e.g. (60, 120, 160); ")


@pytest.mark.parametrize("path,value,message", [
    ("data.name", "mnist",
     "Unknown dataset (config.data.name) 'mnist'. Valid choices: digits, "
     "cifar10, cifar100."),
    ("model.name", "wrn_big", "config.model.name: Unknown model 'wrn_big'"),
    ("student_model", "densenet9_9", "config.student_model: "),
    ("distill.loss", "kl",
     "Unknown distillation loss (config.distill.loss) 'kl'. Valid choices: "
     "ce, kd, kd+label, cwtm, dkpp."),
    ("optim.learning_rate", 0.0,
     "config.optim.learning_rate must be positive, got 0.0."),
    ("optim.learning_rate", -0.1, "config.optim.learning_rate must be "
     "positive"),
    ("num_epochs", 0, "config.num_epochs must be positive, got 0."),
    ("num_generations", 0, "config.num_generations must be >= 1"),
    ("batch_size", 60, "config.batch_size=60 is not divisible by the 8 "
     "devices; use a multiple of 8."),
    ("eval_batch_size", 100, "config.eval_batch_size=100 is not divisible"),
    ("ensemble_sizes", (2, 4), "config.ensemble_sizes has 4: an ensemble "
     "Ens*k averages generations 1..k, so k must be an integer in "
     "2..num_generations=3."),
    ("ensemble_sizes", (2.0,), "config.ensemble_sizes has 2.0: an ensemble "
     "Ens*k averages generations 1..k, so k must be an integer in "
     "2..num_generations=3."),
    ("ensemble_sizes", (2, 3, 2), "config.ensemble_sizes=(2, 3, 2) "
     "repeats a size; list each Ens*k once."),
    ("seeds", (0, 1, 0), "config.seeds=(0, 1, 0) repeats a seed"),
    ("seeds", (-1,), "Seeds must be non-negative integers, got -1"),
    ("model.dropout_rate", 1.0, "config.model.dropout_rate must be in "
     "[0, 1), got 1.0."),
    ("checkpoint_every_steps", -5, "config.checkpoint_every_steps must be "
     ">= 0"),
    ("xla_options", "xla_gpu_autotune_level",
     "xla_options item 'xla_gpu_autotune_level' is not "
     "'xla_<option>=<value>'; separate items with ';'."),
    ("xla_options", "xla_gpu_graph_min_graph_size=2;xla_nope=1",
     "xla_options='xla_gpu_graph_min_graph_size=2;xla_nope=1' was refused "
     "by XLA: INVALID_ARGUMENT: No such compile option: 'xla_nope'"),
    ("xla_options", "xla_gpu_graph_min_graph_size=big",
     "'big' is not a valid int32 value"),
    ("optim.lr_decay_factor", 0.0,
     "config.optim.lr_decay_factor must be positive, got 0.0."),
    ("optim.momentum", 1.0, "config.optim.momentum must be in [0, 1), got "
     "1.0."),
    ("optim.momentum", -0.1, "config.optim.momentum must be in [0, 1), got "
     "-0.1."),
    ("optim.weight_decay", -1e-4,
     "config.optim.weight_decay must be >= 0, got -0.0001."),
    ("student_dropout_rate", 1.0, "config.student_dropout_rate must be in "
     "[0, 1), or negative for model.dropout_rate, got 1.0."),
    ("batch_size", 0, "config.batch_size must be positive, got 0."),
    ("eval_batch_size", 0, "config.eval_batch_size must be positive, got 0."),
    ("eval_every_epochs", 0,
     "config.eval_every_epochs must be positive, got 0."),
    ("steps_per_call", 0, "config.steps_per_call must be positive, got 0."),
    ("distill.temperature", 0.0,
     "config.distill.temperature must be positive, got 0.0."),
    ("ensemble_sizes", (1,), "config.ensemble_sizes has 1: an ensemble "
     "Ens*k averages generations 1..k, so k must be an integer in "
     "2..num_generations=3."),
    ("seeds", (True,), "Seeds must be non-negative integers, got True in "
     "config.seeds=(True,) / config.seed=0."),
    ("seeds", (0, 1.5), "Seeds must be non-negative integers, got 1.5"),
    ("model.dtype", "float8", "config.model.dtype: Unknown dtype 'float8': "
     "use 'auto', 'float32', 'bfloat16' or 'float16'."),
    # Issue 15: values that were taken and made no sense.
    ("optim.lr_decay_epochs", (-5,), _DECAY_EPOCHS + "got (-5,)."),
    ("optim.lr_decay_epochs", (0, 8), _DECAY_EPOCHS + "got (0, 8)."),
    # A repeat would decay once, not twice; the order is the schedule's.
    ("optim.lr_decay_epochs", (8, 8), _DECAY_EPOCHS + "got (8, 8)."),
    ("optim.lr_decay_epochs", (12, 8), _DECAY_EPOCHS + "got (12, 8)."),
    ("optim.lr_decay_epochs", (8.5,), _DECAY_EPOCHS + "got (8.5,)."),
    # What --config.optim.lr_decay_epochs='(abc,)' gives: not a literal, so
    # ml_collections keeps the text.
    ("optim.lr_decay_epochs", ("(abc,)",),
     _DECAY_EPOCHS + "got ('(abc,)',)."),
    ("optim.lr_decay_epochs", 8, _DECAY_EPOCHS + "got 8."),
    ("distill.label_weight", -1.0,
     "config.distill.label_weight must be >= 0, got -1.0."),
    ("distill.teacher_weight", -1.0,
     "config.distill.teacher_weight must be >= 0, got -1.0."),
    ("distill.attention_weight", float("nan"),
     "config.distill.attention_weight must be finite, got nan."),
    ("data.max_train_examples", -1,
     "config.data.max_train_examples must be >= 0 (0: all), got -1."),
    ("data.max_test_examples", -1,
     "config.data.max_test_examples must be >= 0 (0: all), got -1."),
    ("optim.learning_rate", float("inf"),
     "config.optim.learning_rate must be finite, got inf."),
    ("optim.weight_decay", float("inf"),
     "config.optim.weight_decay must be finite, got inf."),
    ("num_epochs", 2.0, "config.num_epochs must be an integer, got 2.0."),
    ("seed", "0", "config.seed must be an integer, got '0'."),
    ("optim.nesterov", 1, "config.optim.nesterov must be True or False, got "
     "1."),
    ("optim.momentum", True, "config.optim.momentum must be a number, got "
     "True."),
    ("data.data_dir", None, "config.data.data_dir must be a string, got "
     "None."),
    ("data.source", "", "Unknown data source (config.data.source) ''. "
     "Valid choices: auto, tfds, archive."),
    ("distill.dkpp_permutation", "batch",
     "Unknown DKPP permutation (config.distill.dkpp_permutation) 'batch'. "
     "Valid choices: example, step."),
    ("seed_scope", "teacher", "Unknown seed scope (config.seed_scope) "
     "'teacher'. Valid choices: chain, students."),
])
def test_impossible_values(path, value, message):
  error = _error(_set(digits.get_config(), path, value))
  assert message in error
  assert not error.startswith("The config has")  # One problem, told once.


def test_batch_sizes_divide_the_devices_the_run_trains_on():
  config = digits.get_config()  # Batches of 64 and 128.
  validation.validate(config, num_devices=4)
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config, num_devices=3)
  assert str(error.value) == (
      "The config has 2 problems:\n"
      "  config.batch_size=64 is not divisible by the 3 devices; use a "
      "multiple of 3.\n"
      "  config.eval_batch_size=128 is not divisible by the 3 devices; use "
      "a multiple of 3.")


def test_seed_scope_students_with_one_seed_or_several():
  # One seed: its own teacher teaches its students, as with "chain".
  for seeds in ((), (3,), (0, 1, 2)):
    config = digits.get_config()
    config.seed_scope = "students"
    config.seeds = seeds
    validation.validate(config)


def test_unknown_paper_row_lists_the_valid_keys():
  config = digits.get_config()
  config.paper_row = "table2/densenet90/ban"
  message = _error(config)
  assert message.startswith(
      "config.paper_row: Unknown paper row 'table2/densenet90/ban'.")
  assert "table<N>/<teacher>/<variant>" in message
  for key in paper_results.ROWS:
    assert key in message


def test_misspelt_field_in_a_python_config():
  config = digits.get_config()
  config.num_generatons = 5  # An unlocked ConfigDict takes the typo.
  assert _error(config) == (
      "config.num_generatons is not a field; did you mean "
      "config.num_generations? (Setting a misspelt field on a ConfigDict "
      "adds a new field instead of changing the real one.)")
  config = digits.get_config()
  config.optim.lr_decay_epoch = (3,)
  assert "did you mean config.optim.lr_decay_epochs?" in _error(config)


def test_flat_fields_and_seed_list():
  assert config_schema.flat_fields(
      {"a": {"b": {"c": 1}, "d": 2}, "e": (3,)}) == {
          "a.b.c": 1, "a.d": 2, "e": (3,)}
  config = digits.get_config()
  config.seed = 4
  assert config_schema.seed_list(config) == [4]
  config.seeds = (2, 0)
  assert config_schema.seed_list(config) == [2, 0]


def test_a_new_field_is_a_warning_a_near_miss_an_error(caplog):
  config = digits.get_config()
  config.model.width = 2  # Like model.dtype (ratio 0.73), but no typo.
  with caplog.at_level("WARNING"):
    validation.check_fields(config)
  assert ("config.model.width is not a field ban_jax knows; it is ignored "
          "unless some code reads it") in caplog.text
  config = digits.get_config()
  config.optim.momentun = 0.8  # One letter off (ratio 0.93).
  with pytest.raises(validation.ConfigError,
                     match=r"did you mean config\.optim\.momentum\?"):
    validation.check_fields(config)


def test_the_train_batch_must_fit_in_the_train_split():
  config = digits.get_config()
  config.batch_size = 64
  validation.check_batch_fits(config, 64)  # One full batch: fine.
  with pytest.raises(validation.ConfigError) as error:
    validation.check_batch_fits(config, 63)
  assert str(error.value) == (
      "config.batch_size=64 is larger than the 63 training examples of "
      "digits; use at most 63.")


@pytest.mark.parametrize("padding,side", [(8, 8), (6, 6)])
def test_crop_padding_must_be_below_the_side(monkeypatch, padding, side):
  if side != 8:  # Non-square images: the shorter side bounds the padding.
    monkeypatch.setitem(validation.DATASET_SHAPES, "digits",
                        ((8, side, 1), 10))
  config = digits.get_config()
  config.data.augment = True
  config.data.crop_padding = padding
  assert _error(config) == (
      f"config.data.crop_padding={padding!r}: the random crop pads each side "
      f"by this many pixels, so it must be an integer in [0, {side}) for "
      "digits; or set config.data.augment=False.")


def test_crop_padding_is_a_non_negative_integer_even_without_augment():
  # Its type and sign are the field's rule, augment or not; only its upper
  # bound (the image side) waits for augment.
  for augment in (True, False):
    config = _set(digits.get_config(), "data.augment", augment)
    assert _error(_set(config, "data.crop_padding", -1)) == (
        "config.data.crop_padding must be >= 0, got -1.")
    assert _error(_set(config, "data.crop_padding", True)) == (
        "config.data.crop_padding must be an integer, got True.")
  # Unused without augment: no upper bound.
  validation.validate(_set(config, "data.crop_padding", 8))


def test_a_model_whose_outputs_are_not_the_classes(monkeypatch):
  get_model = validation.models.get_model
  monkeypatch.setattr(validation.models, "get_model",
                      lambda name, num_classes, **kwargs: get_model(
                          name, 7, **kwargs))
  config = digits.get_config()
  config.model.name = "wrn10_1"
  assert _error(config) == (
      "config.model.name='wrn10_1' gives outputs of shape (7,) on digits, "
      "which has 10 classes.")


def test_a_process_traces_each_network_once():
  """Validating again (a notebook, a sweep, the tests' many runs) traces
  nothing: the networks' shapes are cached, keyed by the module."""
  validation._shapes.cache_clear()
  config = digits.get_config()
  config.model.name = "wrn10_1"
  validation.validate(config)
  traced = validation._shapes.cache_info().misses
  assert traced == 2  # The digits' 8x8 and the large side's stride check.
  validation.validate(config)
  assert validation._shapes.cache_info().misses == traced
  config.model.name = "wrn10_2"  # Another network is traced.
  validation.validate(config)
  assert validation._shapes.cache_info().misses == 2 * traced


def test_a_model_that_downsamples_more_than_the_image_allows(monkeypatch):
  # ResNet-18 halves the image three times; a 4x4 image has room for two.
  monkeypatch.setitem(validation.DATASET_SHAPES, "digits", ((4, 4, 1), 10))
  config = digits.get_config()
  config.model.name = "resnet18"
  assert _error(config) == (
      "config.model.name='resnet18' downsamples by 8, more than digits's "
      "4x4 images allow; pick a model with fewer strided stages.")
  config.model.name = "wrn10_1"  # Downsamples by 4: fits.
  validation.validate(config)
  # The shorter side counts.
  monkeypatch.setitem(validation.DATASET_SHAPES, "digits", ((16, 4, 1), 10))
  config.model.name = "resnet18"
  assert _error(config) == (
      "config.model.name='resnet18' downsamples by 8, more than digits's "
      "16x4 images allow; pick a model with fewer strided stages.")


def test_teacher_and_student_that_cannot_be_paired():
  config = digits.get_config()
  config.student_model = "densenet100_12"
  config.share_stem_classifier = True
  message = _error(config)
  assert message.startswith(
      "config.share_stem_classifier: wrn10_2's stem has shapes")
  assert "but densenet100_12's has" in message

  # Attention transfer and FSP need as many stages in both (and of the same
  # sizes); ResNet-18 has four stages, a Wide-ResNet three.
  for weight in ("attention_weight", "fsp_weight"):
    config = digits.get_config()
    config.student_model = "resnet18"
    config.distill[weight] = 1.0
    assert _error(config).startswith(
        "config.distill.attention_weight / fsp_weight: the feature terms "
        "between wrn10_2 (teacher) and resnet18 (student) cannot be "
        "computed: ")


_FOUR_PROBLEMS = (
    "config.distill.label_weight must be >= 0, got -1.0.",
    _DECAY_EPOCHS + "got (-5,).",
    "config.optim.learning_rate must be finite, got inf.",
    "config.data.max_test_examples must be >= 0 (0: all), got -1.",
)


def test_every_problem_at_once_one_line_each():
  config = digits.get_config()
  config.optim.learning_rate = float("inf")
  config.distill.label_weight = -1.0
  config.optim.lr_decay_epochs = (-5,)
  config.data.max_test_examples = -1
  lines = _error(config).splitlines()
  assert lines[0] == "The config has 4 problems:"
  assert sorted(lines[1:]) == sorted(f"  {p}" for p in _FOUR_PROBLEMS)


def test_a_check_is_skipped_when_a_field_it_reads_is_wrong():
  config = digits.get_config()
  config.model.dtype = "float8"
  config.model.name = "wrn_big"
  config.batch_size = 0  # Its rule fails: divisibility is not checked.
  message = _error(config)
  # Not a third message from tracing the model with that name and dtype.
  assert message.startswith("The config has 3 problems:\n"
                            "  config.batch_size must be positive, got 0.\n"
                            "  config.model.dtype: Unknown dtype 'float8'")
  assert "\n  config.model.name: Unknown model 'wrn_big'." in message
  # The model list under it is indented: one problem, one unindented line.
  assert len([line for line in message.splitlines()[1:]
              if not line.startswith("    ")]) == 3


def test_a_missing_field_is_named():
  fields = digits.get_config().to_dict()
  del fields["distill"]["dkpp_permutation"]
  assert _error(ml_collections.ConfigDict(fields)) == (
      "The config lacks distill.dkpp_permutation. Start it from "
      "configs/default.py's get_config(), which has every field.")


def _main(*args):
  return subprocess.run(
      [sys.executable, "-m", "ban_jax.main", *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})


def test_the_command_line_lists_every_problem_before_any_compute(tmp_path):
  workdir = tmp_path / "run"
  run = _main("--config=configs/digits.py", f"--workdir={workdir}",
              "--config.optim.learning_rate=inf",
              "--config.distill.label_weight=-1",
              "--config.optim.lr_decay_epochs=(-5,)",
              "--config.data.max_test_examples=-1")
  assert run.returncode == 1, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  lines = run.stderr.splitlines()
  start = lines.index("ERROR: The config has 4 problems:")
  assert sorted(lines[start + 1:]) == sorted(f"  {p}" for p in _FOUR_PROBLEMS)
  assert not workdir.exists()  # Refused before the workdir is made.


def test_a_tuple_that_is_no_literal_is_one_line(tmp_path):
  workdir = tmp_path / "run"
  run = _main("--config=configs/digits.py", f"--workdir={workdir}",
              "--config.optim.lr_decay_epochs=(abc,)")
  assert run.returncode == 1, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  assert run.stderr.splitlines()[-1] == (
      "ERROR: " + _DECAY_EPOCHS + "got ('(abc,)',).")
  assert not workdir.exists()  # Refused before the workdir is made.


def test_run_validates_before_any_compute(tmp_path, monkeypatch):
  def no_data(_):
    raise AssertionError("loaded the data before validating the config")

  monkeypatch.setattr(pipeline, "load_dataset", no_data)
  config = digits.get_config()
  config.num_generations = 0
  with pytest.raises(validation.ConfigError, match="num_generations"):
    run_results.run_chain(config, tmp_path)
  assert not (tmp_path / "config.json").exists()
  assert not (tmp_path / "seed_0").exists()


def test_the_shipped_configs_are_valid():
  from configs import cifar100  # pylint: disable=g-import-not-at-top
  validation.validate(default.get_config())
  validation.validate(digits.get_config())
  validation.validate(cifar100.get_config(
      "model=densenet90_60,student=densewrn1_1,share"))
