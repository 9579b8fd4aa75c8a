"""End to end: kill -9, SIGTERM, a NaN loss, a full disk, through the real command."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from ban_jax import pipeline
from ban_jax import train
from ban_jax.runtime import checkpoints
from ban_jax.runtime import parallel
from configs import digits
from tests import run_results
from tests.run_results import scores as _scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
# ------------------------------------------- the command line, killed or NaN


@pytest.fixture(name="xla_cache")
def _xla_cache(session_xla_cache):
  """The compilation cache of this module's runs of the command line."""
  return session_xla_cache


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
  # config.compilation_cache_dir reached JAX (that JAX then writes there,
  # test_multihost checks with a fresh folder).
  assert f"Compilation cache: {xla_cache}" in log

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
