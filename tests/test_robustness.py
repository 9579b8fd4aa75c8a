"""A run left alone: kill -9, NaN losses, corrupt checkpoints, bad configs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ban_jax import checkpoints
from ban_jax import paper_results
from ban_jax import parallel
from ban_jax import pipeline
from ban_jax import train
from ban_jax import validation
from configs import digits
from tests.run_results import scores as _scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
# ------------------------------------------- the command line, killed or NaN


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """A compilation cache shared by this module's runs of the command line."""
  return tmp_path_factory.mktemp("xla_cache")


def _main(workdir: pathlib.Path, cache: pathlib.Path, log: pathlib.Path,
          *overrides: str):
  """Starts the real command line on a tiny chain, logging to `log`."""
  command = [
      sys.executable, "-m", "ban_jax.main", "--config=configs/digits.py",
      f"--workdir={workdir}", "--config.model.name=wrn10_1",
      "--config.num_generations=1", "--config.num_epochs=2",
      "--config.optim.lr_decay_epochs=(1,)",
      # Runs after the first load their compiled programs from disk.
      f"--config.compilation_cache_dir={cache}", *overrides]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         # One CPU device compiles fastest; the batch (64) divides it.
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # It would take precedence.
  with open(log, "w") as out:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def _finish(process, log: pathlib.Path, returncode: int = 0,
            timeout: float = 120) -> str:
  try:
    process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
  text = log.read_text()
  assert process.returncode == returncode, text[-3000:]
  return text


def _committed_steps(directory: pathlib.Path) -> list[int]:
  # Orbax names a step's folder by the bare number only once it is complete.
  if not directory.exists():
    return []
  return [int(p.name) for p in directory.iterdir() if p.name.isdigit()]


def test_kill_9_mid_generation_then_rerun_gives_the_same_results(
    tmp_path, xla_cache):
  every_4_steps = "--config.checkpoint_every_steps=4"
  baseline = tmp_path / "baseline"
  log = _finish(_main(baseline, xla_cache, tmp_path / "baseline.log"),
                tmp_path / "baseline.log")
  # config.compilation_cache_dir reached JAX: the steps were written there.
  assert f"Compilation cache: {xla_cache}" in log
  assert os.listdir(xla_cache)

  killed = tmp_path / "killed"
  process = _main(killed, xla_cache, tmp_path / "killed.log", every_4_steps)
  gen_1 = killed / "seed_0" / "gen_1"
  deadline = time.monotonic() + 120
  try:
    while not _committed_steps(gen_1 / "checkpoints"):
      assert process.poll() is None, (
          "finished before it could be killed:\n"
          + (tmp_path / "killed.log").read_text()[-3000:])
      assert time.monotonic() < deadline, "no checkpoint of generation 1"
      time.sleep(0.02)
  finally:
    process.send_signal(signal.SIGKILL)  # A no-op if it has already ended.
    process.wait(timeout=30)
  assert process.returncode == -signal.SIGKILL
  assert (killed / "seed_0" / "gen_0" / "result.json").exists()
  assert not (gen_1 / "result.json").exists()  # Killed mid-generation.

  log = _finish(_main(killed, xla_cache, tmp_path / "rerun.log",
                      every_4_steps), tmp_path / "rerun.log")
  assert "Generation 1: resuming from checkpoint step" in log
  assert "gen 0 epoch" not in log  # The finished teacher is not retrained.
  expected = json.loads((baseline / "results.json").read_text())
  resumed = json.loads((killed / "results.json").read_text())
  assert _scores(resumed) == _scores(expected)  # Exactly, on CPU.


def test_exploding_learning_rate_stops_with_the_last_good_checkpoint(
    tmp_path, xla_cache):
  # Epoch 1 (steps 0-20) trains normally and is checkpointed; then the
  # learning rate is 5e28.
  log = _finish(_main(tmp_path, xla_cache, tmp_path / "log",
                      "--config.optim.lr_decay_factor=1e30"),
                tmp_path / "log", returncode=1)
  ckpt_dir = tmp_path.resolve() / "seed_0" / "gen_0" / "checkpoints"
  assert ("Non-finite training loss in generation 0 at steps 21-42. The "
          f"last good checkpoint is {ckpt_dir}/21; it is left intact.") in log
  assert not (tmp_path / "seed_0" / "gen_0" / "result.json").exists()

  # That checkpoint is intact: it restores, finite, at the end of epoch 1.
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.num_epochs = 2
  data = train.put_dataset(pipeline.load_dataset(config.data),
                           parallel.make_mesh(), config.eval_batch_size)
  trainer = pipeline._trainer({}, config, config.model.name, None, False,
                              data, parallel.make_mesh())
  ckpt = checkpoints.GenerationCheckpoints(ckpt_dir)
  step, state, progress = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  assert ckpt.all_steps() == [21]
  assert step == 21 and int(parallel.fetch(state.step)) == 21
  assert checkpoints.is_finite(state)
  assert [r["epoch"] for r in progress["history"]] == [1]
  # An epoch-end checkpoint holds no partial sums for the next epoch.
  assert progress["epoch_sums"] == {}


def _tiny_state(value=0.0):
  return {"step": jnp.array(3, jnp.int32),
          "params": {"w": jnp.full((64,), value, jnp.float32)}}


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, _tiny_state(1.0), {"history": []})
  ckpt.wait()
  with pytest.raises(checkpoints.NonFiniteStateError,
                     match=r"step 2 has NaN .* last good checkpoint is "
                     r".*gen_0/1; it is left intact"):
    ckpt.save(2, _tiny_state(np.nan), {"history": []})
  ckpt.close()
  assert ckpt.all_steps() == [1]


def test_progress_is_saved_as_it_was_when_save_was_called(tmp_path):
  # Orbax writes the JSON in a background thread; train.fit goes on
  # updating the same dict (epoch sums, history) right after save returns.
  # A race, so several saves: each one lost it about half the time.
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0", max_to_keep=5)
  progress = {"history": [], "epoch_sums": [0.0]}
  for step in range(1, 6):
    ckpt.save(step, _tiny_state(1.0), progress)
    progress["history"].append({"epoch": step})
    progress["epoch_sums"] = [float(step)]
  ckpt.close()
  assert ckpt.all_steps() == [1, 2, 3, 4, 5]
  for step in range(1, 6):
    saved = json.loads(
        (tmp_path / "gen_0" / str(step) / "progress" / "metadata").read_text())
    assert saved == {"history": [{"epoch": e} for e in range(1, step)],
                     "epoch_sums": [float(step - 1)]}, step
  _, _, latest = checkpoints.GenerationCheckpoints(
      tmp_path / "gen_0").restore_latest(jax.eval_shape(_tiny_state))
  assert latest == saved


# ----------------------------------------------------- corrupt checkpoints


def test_a_non_finite_checkpoint_on_disk_is_set_aside(tmp_path):
  # Written behind save's guard (say, by an older version): restore checks.
  directory = tmp_path / "checkpoints"
  ckpt = checkpoints.GenerationCheckpoints(directory)
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.wait()
  ckpt._manager.save(  # pylint: disable=protected-access
      2, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_tiny_state(np.inf)),
          progress=ocp.args.JsonSave({"history": [1, 2]})))
  ckpt.close()
  step, state, progress = checkpoints.GenerationCheckpoints(
      directory).restore_latest(jax.eval_shape(_tiny_state))
  assert step == 1 and progress == {"history": [1]}
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert (directory / "2.unreadable").exists()


def _garble(step_dir: pathlib.Path) -> None:
  """Truncates every data file of a checkpoint's state to half its size."""
  files = [p for p in (step_dir / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# Orbax's failed read of the truncated files can leave a TensorStore callback
# that fires after its event loop has closed: noise from the error path.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncated data", "garbled progress"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(
    tmp_path, caplog, damage):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoints.GenerationCheckpoints(directory)
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.save(2, _tiny_state(2.0), {"history": [1, 2]})
  ckpt.close()
  if damage == "truncated data":
    _garble(directory / "2")
  else:
    (directory / "2" / "progress" / "metadata").write_text('{"histo')
  # And a save that a kill interrupted: Orbax's temporary folder.
  (directory / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)

  ckpt = checkpoints.GenerationCheckpoints(directory)
  abstract = jax.eval_shape(_tiny_state)
  with caplog.at_level("WARNING"):
    step, state, progress = ckpt.restore_latest(abstract)
  assert step == 1 and progress == {"history": [1]}
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert f"Checkpoint {directory}/2 is unreadable" in caplog.text
  # Moved aside, so that training can write step 2 again.
  assert (directory / "2.unreadable").exists()
  ckpt.save(2, _tiny_state(5.0), {"history": [1, 2]})
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]
  assert not (directory / "3.orbax-checkpoint-tmp").exists()


# ------------------------------------------------------------ validation


def _error(config) -> str:
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  return str(error.value)


def _set(config, path: str, value):
  *parents, name = path.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[name] = value
  return config


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
     "Ens*k averages generations 1..k, so k must be in 2..num_generations=3"),
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
])
def test_impossible_values(path, value, message):
  assert message in _error(_set(digits.get_config(), path, value))


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


def test_teacher_and_student_that_cannot_be_paired():
  config = digits.get_config()
  config.student_model = "densenet100_12"
  config.share_stem_classifier = True
  message = _error(config)
  assert message.startswith(
      "config.share_stem_classifier: wrn10_2's stem has shapes")
  assert "but densenet100_12's has" in message

  # Attention transfer needs stages of the same sizes; ResNet-18 has four
  # stages, a Wide-ResNet three.
  config = digits.get_config()
  config.student_model = "resnet18"
  config.distill.attention_weight = 1.0
  assert _error(config).startswith(
      "config.distill.attention_weight / fsp_weight: the feature terms "
      "between wrn10_2 (teacher) and resnet18 (student) cannot be "
      "computed: ")


def test_run_validates_before_any_compute(tmp_path, monkeypatch):
  def no_data(_):
    raise AssertionError("loaded the data before validating the config")

  monkeypatch.setattr(pipeline, "load_dataset", no_data)
  config = digits.get_config()
  config.num_generations = 0
  with pytest.raises(validation.ConfigError, match="num_generations"):
    pipeline.run(config, str(tmp_path))
  assert not (tmp_path / "config.json").exists()
  assert not (tmp_path / "seed_0").exists()


def test_the_shipped_configs_are_valid():
  from configs import cifar100  # pylint: disable=g-import-not-at-top
  validation.validate(digits.get_config())
  validation.validate(cifar100.get_config(
      "model=densenet90_60,student=densewrn1_1,share"))
