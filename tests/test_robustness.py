"""A run left alone: kill -9, NaN losses, corrupt checkpoints, bad configs."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

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
from tests import run_results
from tests.run_results import scores as _scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
# ------------------------------------------- the command line, killed or NaN


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """A compilation cache shared by this module's runs of the command line."""
  return tmp_path_factory.mktemp("xla_cache")


def _main(workdir: pathlib.Path, cache: pathlib.Path, log: pathlib.Path,
          *overrides: str, obey_file_modes: bool = False):
  """Starts the real command line on a tiny chain, logging to `log`."""
  command = [
      sys.executable, "-m", "ban_jax.main", "--config=configs/digits.py",
      f"--workdir={workdir}", "--config.model.name=wrn10_1",
      "--config.num_generations=1", "--config.num_epochs=2",
      "--config.optim.lr_decay_epochs=(1,)",
      # Runs after the first load their compiled programs from disk.
      f"--config.compilation_cache_dir={cache}", *overrides]
  if obey_file_modes:
    command = run_results.obeying_file_modes(command)
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
  try:
    run_results.wait_until(lambda: _committed_steps(gen_1 / "checkpoints"),
                           [process], tmp_path / "killed.log",
                           "a checkpoint of generation 1")
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


def test_sigterm_checkpoints_the_step_reached_and_the_rerun_goes_on(
    tmp_path, xla_cache):
  # Two epochs (0.5 s or more) for the signal to land in generation 0.
  three_epochs = "--config.num_epochs=3"
  log_path = tmp_path / "stopped.log"
  process = _main(tmp_path, xla_cache, log_path, three_epochs)
  try:
    run_results.wait_until(lambda: "gen 0 epoch 1/3" in log_path.read_text(),
                           [process], log_path, "epoch 1 of generation 0")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  log = log_path.read_text()
  assert process.returncode == 143, log[-3000:]  # 128 + SIGTERM.
  stopped = re.fullmatch(
      r"STOPPED: Stopped by SIGTERM in generation (\d) at step (\d+), "
      r"checkpointed in (.*)/(\d+)\. Rerun the same command to continue "
      r"from there\.", log.strip().splitlines()[-1])
  assert stopped, log[-3000:]
  # Signalled in epoch 2 of generation 0 (21 steps an epoch, 3 epochs).
  generation, step = int(stopped[1]), int(stopped[2])
  assert generation == 0 and 21 < step < 63 and stopped[4] == stopped[2]
  assert int(stopped[4]) in _committed_steps(pathlib.Path(stopped[3]))
  assert "Traceback" not in log

  log = _finish(_main(tmp_path, xla_cache, tmp_path / "rerun.log",
                      three_epochs), tmp_path / "rerun.log")
  assert f"Generation 0: resuming from checkpoint step {step} of 63." in log
  assert (tmp_path / "results.json").exists()


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


def test_a_failed_checkpoint_write_is_one_message_and_loses_nothing(
    tmp_path, xla_cache):
  # Generation 1's checkpoint folder cannot be written: as a full disk or a
  # quota would fail it, after generation 0 has finished.
  gen_1 = tmp_path.resolve() / "seed_0" / "gen_1" / "checkpoints"
  gen_1.mkdir(parents=True)
  gen_1.chmod(0o555)
  run_results.skip_unless_modes_bind(gen_1)
  log = _finish(_main(tmp_path, xla_cache, tmp_path / "failed.log",
                      obey_file_modes=True),
                tmp_path / "failed.log", returncode=1)
  last = log.strip().splitlines()[-1]
  assert last.startswith(f"ERROR: Could not write a checkpoint in {gen_1}: ")
  assert "Permission denied" in last
  assert last.endswith(
      "Nothing already saved is lost: finished generations are kept and this "
      "generation has no complete checkpoint yet and will start again. Free "
      "some space (or fix the folder's permissions or quota) and rerun the "
      "same command.")
  assert "Traceback" not in log
  assert (tmp_path / "seed_0" / "gen_0" / "result.json").exists()

  gen_1.chmod(0o755)
  log = _finish(_main(tmp_path, xla_cache, tmp_path / "rerun.log"),
                tmp_path / "rerun.log")
  assert "Generation 0: finished earlier" in log
  assert "gen 0 epoch" not in log and "gen 1 epoch 2/2" in log
  assert (tmp_path / "results.json").exists()


def _tiny_state(value=0.0):
  return {"step": jnp.array(3, jnp.int32),
          "params": {"w": jnp.full((64,), value, jnp.float32)}}


def _two_steps(directory, **options) -> checkpoints.GenerationCheckpoints:
  """Checkpoints of steps 1 and 2 (w all 1.0, then 2.0), on disk."""
  ckpt = checkpoints.GenerationCheckpoints(directory, **options)
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.save(2, _tiny_state(2.0), {"history": [1, 2]})
  ckpt.wait()
  return ckpt


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


@pytest.mark.parametrize("failure", [
    ValueError('RESOURCE_EXHAUSTED: Error writing "step/0": No space left '
               "on device [os_error_code='28']"),
    OSError(122, "Disk quota exceeded")])
def test_a_failed_write_says_where_the_generation_resumes(
    tmp_path, monkeypatch, failure):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)

  def fail(*args, **kwargs):
    del args, kwargs
    raise failure
  monkeypatch.setattr(ckpt._manager, "save", fail)  # pylint: disable=protected-access
  with pytest.raises(checkpoints.CheckpointWriteError) as error:
    ckpt.save(3, _tiny_state(3.0), {"history": [1, 2, 3]})
  assert str(error.value) == (
      f"Could not write a checkpoint in {directory}: {failure}. Nothing "
      "already saved is lost: finished generations are kept and this "
      "generation will resume from step 2. Free some space (or fix the "
      "folder's permissions or quota) and rerun the same command.")
  assert error.value.__cause__ is failure
  # Surfacing at wait() (saves are asynchronous), before any step is kept.
  empty = checkpoints.GenerationCheckpoints(tmp_path / "empty")
  monkeypatch.setattr(empty._manager, "wait_until_finished", fail)  # pylint: disable=protected-access
  with pytest.raises(checkpoints.CheckpointWriteError,
                     match="this generation has no complete checkpoint yet "
                     "and will start again"):
    empty.wait()


def test_other_errors_of_a_save_are_not_taken_for_write_failures(
    tmp_path, monkeypatch):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "checkpoints")
  bug = ValueError("Expected a PyTree of arrays, got <object>")

  def fail(*args, **kwargs):
    del args, kwargs
    raise bug
  monkeypatch.setattr(ckpt._manager, "save", fail)  # pylint: disable=protected-access
  with pytest.raises(ValueError) as error:
    ckpt.save(1, _tiny_state(1.0), {})
  assert error.value is bug


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
@pytest.mark.parametrize("damage", ["truncated data", "garbled progress",
                                    "missing state"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(
    tmp_path, caplog, damage):
  directory = tmp_path / "checkpoints"
  _two_steps(directory).close()
  if damage == "truncated data":
    _garble(directory / "2")
  elif damage == "garbled progress":
    (directory / "2" / "progress" / "metadata").write_text('{"histo')
  else:  # A partial copy: Orbax raises a KeyError, not a ValueError.
    shutil.rmtree(directory / "2" / "state")
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


def test_a_step_set_aside_twice_replaces_the_older_copy(tmp_path):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory, max_to_keep=5)
  for value in (3.0, 4.0):  # Step 2 is written again, and is bad again.
    (directory / "2" / "progress" / "metadata").write_text("{")
    step, _, _ = ckpt.restore_latest(jax.eval_shape(_tiny_state))
    assert step == 1 and ckpt.all_steps() == [1]
    assert not (directory / "2").exists()
    ckpt.save(2, _tiny_state(value), {"history": [value]})
    ckpt.wait()
  ckpt.close()
  # The set-aside copy is the latest bad one (written with 3.0), whole.
  restored = ocp.StandardCheckpointer().restore(
      directory / "2.unreadable" / "state", jax.eval_shape(_tiny_state))
  np.testing.assert_array_equal(restored["params"]["w"], np.full(64, 3.0))


class _Process:
  """`jax` as process `index` of `count` sees it (for checkpoints only)."""

  def __init__(self, index, count):
    self._index, self._count = index, count

  def process_index(self):
    return self._index

  def process_count(self):
    return self._count

  def __getattr__(self, name):
    return getattr(jax, name)


@pytest.mark.parametrize("index", [0, 1])
def test_on_several_hosts_process_0_sets_aside_and_the_others_wait(
    tmp_path, monkeypatch, index):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)
  (directory / "2" / "progress" / "metadata").write_text("{")
  syncs = []
  monkeypatch.setattr(checkpoints, "jax", _Process(index, 2))
  monkeypatch.setattr(
      checkpoints.multihost_utils, "sync_global_devices",
      lambda name: syncs.append((name, (directory / "2").exists(),
                                 (directory / "2.unreadable").exists())))
  step, _, _ = ckpt.restore_latest(jax.eval_shape(_tiny_state))
  ckpt.close()
  assert step == 1
  # All hosts meet once the rename is done (by process 0 only; the others
  # leave the shared folder alone), and only then re-list the steps.
  renamed = index == 0
  assert syncs == [(f"set_aside:{directory}", not renamed, renamed)]
  assert ckpt.all_steps() == ([1] if renamed else [1, 2])


def test_a_step_unreadable_on_another_host_is_skipped_here_too(
    tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  ckpt = _two_steps(directory)
  # Both steps read fine here, on process 0; process 1 fails to read step 2.
  others_failed = iter([1, 0])
  gathered = []

  def allgather(failed_here):
    gathered.append(int(failed_here))
    return np.array([failed_here, next(others_failed)])

  monkeypatch.setattr(checkpoints, "jax", _Process(0, 2))
  monkeypatch.setattr(checkpoints.multihost_utils, "process_allgather",
                      allgather)
  monkeypatch.setattr(checkpoints.multihost_utils, "sync_global_devices",
                      lambda name: None)
  step, state, progress = ckpt.restore_latest(jax.eval_shape(_tiny_state))
  ckpt.close()
  # Step 2 is skipped on every host, so all of them resume from step 1.
  assert gathered == [0, 0]
  assert (step, progress) == (1, {"history": [1]})
  np.testing.assert_array_equal(state["params"]["w"], np.ones(64))
  assert ckpt.all_steps() == [1]
  assert (directory / "2.unreadable").is_dir()


def test_is_finite_finds_a_single_bad_value():
  good = {"w": jnp.ones((4, 4)), "step": jnp.array(3), "n": np.arange(3),
          "b": jnp.zeros(2, jnp.bfloat16)}
  assert checkpoints.is_finite(good)
  for bad in (np.array([1.0, np.inf, 2.0], np.float32),
              jnp.array([0.0, 1.0, np.nan], jnp.bfloat16)):
    assert not checkpoints.is_finite(dict(good, x=bad))


def test_default_keeps_the_two_latest_steps(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  for step in (1, 2, 3):
    ckpt.save(step, _tiny_state(step), {"history": [step]})
  ckpt.close()
  assert ckpt.all_steps() == [2, 3]
  assert sorted(p.name for p in (tmp_path / "gen_0").iterdir()) == ["2", "3"]


def test_wait_returns_with_the_step_on_disk(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, {"w": jnp.ones((256, 256))}, {"history": [1]})
  ckpt.wait()
  assert [p.name for p in (tmp_path / "gen_0").iterdir()] == ["1"]
  assert (tmp_path / "gen_0" / "1" / "commit_success.txt").exists()
  ckpt.close()


def test_a_relative_directory_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoints.GenerationCheckpoints("run/gen_0")
  assert str(ckpt.directory) == str(tmp_path.resolve() / "run" / "gen_0")
  ckpt.save(1, _tiny_state(1.0), {"history": [1]})
  ckpt.close()
  monkeypatch.chdir("/")
  assert "run/gen_0/1;" in ckpt.last_good_message()
  step, _, progress = checkpoints.GenerationCheckpoints(
      tmp_path / "run" / "gen_0").restore_latest(jax.eval_shape(_tiny_state))
  assert step == 1 and progress == {"history": [1]}


def test_restore_places_the_state_as_the_abstract_state_says(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "gen_0")
  ckpt.save(1, jax.device_put(_tiny_state(2.0), jax.devices()[3]), {})
  ckpt.close()
  mesh = parallel.make_mesh()
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(_tiny_state))
  _, state, _ = checkpoints.GenerationCheckpoints(
      tmp_path / "gen_0").restore_latest(abstract)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert len(leaf.addressable_shards) == 8
  np.testing.assert_array_equal(state["params"]["w"], np.full(64, 2.0))


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
    ("distill.dkpp_permutation", "epoch", "Unknown DKPP permutation "
     "(config.distill.dkpp_permutation) 'epoch'. Valid choices: example, "
     "step."),
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


def test_flat_fields_and_seed_list():
  assert validation.flat_fields(
      {"a": {"b": {"c": 1}, "d": 2}, "e": (3,)}) == {
          "a.b.c": 1, "a.d": 2, "e": (3,)}
  config = digits.get_config()
  config.seed = 4
  assert validation.seed_list(config) == [4]
  config.seeds = (2, 0)
  assert validation.seed_list(config) == [2, 0]


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


@pytest.mark.parametrize("padding,side", [(8, 8), (-1, 8), (True, 8),
                                          (6, 6)])
def test_crop_padding_must_be_an_integer_below_the_side(
    monkeypatch, padding, side):
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
