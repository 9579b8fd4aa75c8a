"""Tracebacks that became sentences: one line for what a user can fix.

A missing accelerator (JAX_PLATFORMS naming one this machine lacks), a
config file that is not a whole config, a TFDS data_dir this user may not
read, and TensorStore's kilobytes of detail in checkpoint errors.
"""

import logging as std_logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ban_jax import validation
from ban_jax.runtime import checkpoints
from ban_jax.runtime import logs
from ban_jax.runtime import platforms
from ban_jax.runtime import short_errors
from configs import digits
from tests import run_results

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*args, env=None, obey_file_modes=False):
  command = [sys.executable, "-m", "ban_jax.main", *args]
  if obey_file_modes:
    command = run_results.obeying_file_modes(command)
  return subprocess.run(
      command, cwd=ROOT, capture_output=True, text=True, timeout=180,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           **(env or {})})


def _errors(stderr: str) -> list[str]:
  """The lines that are not absl's INFO and WARNING lines."""
  return [line for line in stderr.splitlines()
          if line and not (line[0] in "IW" and line[1:5].isdigit())]


@pytest.mark.skipif("cuda" in platforms.installed_platforms(),
                    reason="JAX has a CUDA plugin here")
def test_a_missing_accelerator_is_one_line(tmp_path):
  run = _run("--config=configs/digits.py", f"--workdir={tmp_path / 'w'}",
             env={"JAX_PLATFORMS": "cuda"})
  assert run.returncode == 1
  assert _errors(run.stderr) == [
      "ERROR: JAX_PLATFORMS='cuda' asks for an NVIDIA GPU (CUDA), but JAX "
      f"here has no plugin for cuda (it has: "
      f"{', '.join(platforms.installed_platforms())}). Install it with pip "
      'install -U "jax[cuda12]" (on a machine with an NVIDIA GPU and its '
      "driver), or unset JAX_PLATFORMS to run on what is here."]
  assert not (tmp_path / "w").exists()


def test_the_accelerator_messages(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "gpu")
  rocm = RuntimeError("Unable to initialize backend 'rocm': Backend 'rocm' "
                      "is not in the list of known backends")
  gpu = platforms.unavailable_message("gpu", rocm, ["cpu"])
  assert gpu.startswith("JAX_PLATFORMS='gpu' asks for a GPU, but JAX here "
                        "has no plugin for gpu (it has: cpu). Install it "
                        'with pip install -U "jax[cuda12]"')
  assert "rocm" not in gpu
  tpu = platforms.unavailable_message("tpu", RuntimeError("libtpu.so"),
                                      ["cpu"])
  assert 'pip install -U "jax[tpu]" (on a Cloud TPU VM)' in tpu
  # The plugin is there, the device is not: JAX's reason, in short.
  no_device = platforms.unavailable_message(
      "cuda", AssertionError(), ["cpu", "cuda"])
  assert no_device == (
      "JAX_PLATFORMS='cuda' asks for an NVIDIA GPU (CUDA), which JAX cannot "
      "start here (AssertionError). Check that the device and its driver "
      "are visible to this process, or unset JAX_PLATFORMS to run on what "
      "is here (cpu, cuda).")


def test_partial_config_files_name_the_file_and_the_missing_fields(
    tmp_path):
  plain = tmp_path / "plain.py"
  plain.write_text("def get_config():\n  return {'seed': 0}\n")
  no_data = tmp_path / "no_data.py"
  no_data.write_text(
      "from configs import digits\n\n\ndef get_config():\n"
      "  config = digits.get_config()\n  del config['data']\n"
      "  del config['num_epochs']\n  return config\n")
  for path, message in (
      (plain, f"ERROR: config file '{plain}': get_config() returned a dict, "
       "not an ml_collections.ConfigDict. Start it from configs/default.py's "
       "get_config(), which has every field."),
      (no_data, f"ERROR: config file '{no_data}' lacks data (the whole "
       "block: data.archive_path, data.augment, data.crop_padding, "
       "data.data_dir, data.max_test_examples, data.max_train_examples, "
       "data.name, data.source), num_epochs. Start it from "
       "configs/default.py's get_config(), which has every field.")):
    run = _run(f"--config={path}", f"--workdir={tmp_path / 'w'}",
               env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 1, run.stderr[-3000:]
    assert _errors(run.stderr) == [message]
  assert not (tmp_path / "w").exists()


def test_validate_names_every_missing_field_at_once():
  config = digits.get_config()
  del config["optim"]["momentum"]
  del config["model"]
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  assert str(error.value) == (
      "The config lacks model (the whole block: model.dropout_rate, "
      "model.dtype, model.layers_per_scan, model.name), optim.momentum. "
      "Start it from "
      "configs/default.py's get_config(), which has every field.")


def test_an_unreadable_tfds_data_dir_is_not_missing_data(tmp_path):
  data_dir = tmp_path / "tfds"
  (data_dir / "cifar10").mkdir(parents=True)
  data_dir.chmod(0)
  try:
    run_results.skip_unless_modes_bind(data_dir)
    run = _run("--config=configs/cifar10.py:smoke",
               f"--workdir={tmp_path / 'w'}",
               f"--config.data.data_dir={data_dir}", obey_file_modes=True)
  finally:
    data_dir.chmod(0o755)
  assert run.returncode == 1, run.stderr[-3000:]
  assert _errors(run.stderr) == [
      f"ERROR: CIFAR-10: TFDS data_dir={data_dir} (from "
      f"config.data.data_dir) cannot be read: permission denied on "
      f"{data_dir}. Make it readable (chmod -R a+rX {data_dir}, or ask its "
      "owner), or point config.data.data_dir at a readable copy."]


# -------------------------------------------- TensorStore's long errors

_SPEC = ("[tensorstore_spec='{\"context\":{\"cache_pool\":{}},\"driver\":"
         "\"zarr\",\"kvstore\":{\"path\":\"/ckpt/21/state/\"}}']")
_FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "params.stem.kernel/0" in OCDBT '
    'database at local file "/runs/c100/seed_0/gen_1/checkpoints/21.orbax-'
    'checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed '
    'writing: "/runs/c100/seed_0/gen_1/checkpoints/21.orbax-checkpoint-tmp/'
    'state.orbax-checkpoint-tmp/ocdbt.process_0/d/85e4cf1d7ebee25bca952f6ef'
    '58a7627": Failed to write 76527 bytes to file 4: No space left on '
    "device [os_error_code='28'] " + _SPEC)


def test_one_line_drops_the_spec_and_keeps_both_ends():
  short = short_errors.one_line(_FULL_DISK)
  assert "tensorstore_spec" not in short and "\n" not in short
  assert len(short) <= short_errors.LIMIT
  assert short.startswith('RESOURCE_EXHAUSTED: Error writing "params.')
  assert short.endswith("No space left on device [os_error_code='28']")
  assert short_errors.one_line("short\nand plain") == "short and plain"


def test_orbax_errors_are_one_line_and_in_full_in_the_debug_log(caplog):
  record = std_logging.LogRecord(
      "absl", std_logging.ERROR, "/site-packages/orbax/checkpoint/future.py",
      387, "[process=0] _SignalingThread.run() raised an exception: %s",
      (_FULL_DISK,), None)
  # The absl logger's own level too: tests before this one may have set it.
  with caplog.at_level(std_logging.DEBUG, logger="absl"):
    assert logs.quiet_orbax(record)  # pylint: disable=protected-access
  assert len(record.getMessage()) <= short_errors.LIMIT
  assert "No space left on device" in record.getMessage()
  assert f"In full: [process=0] _SignalingThread.run() raised an exception: " \
         f"{_FULL_DISK}" in caplog.text


def test_a_failed_write_is_one_short_message(tmp_path):
  ckpt = checkpoints.GenerationCheckpoints(tmp_path / "ckpt")
  with pytest.raises(checkpoints.CheckpointWriteError) as error:
    with ckpt._write_failures_explained():  # pylint: disable=protected-access
      raise ValueError(_FULL_DISK)
  ckpt.close()
  message = str(error.value)
  assert "tensorstore_spec" not in message
  assert "No space left on device" in message
  assert len(message) < 700


# Orbax's failed read can leave a TensorStore callback that fires after its
# event loop has closed: noise from the error path.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unreadable_checkpoint_is_a_one_line_warning(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  state = {"w": np.ones(64, np.float32)}
  ckpt = checkpoints.GenerationCheckpoints(directory)
  ckpt.save(1, state, {})
  ckpt.save(2, state, {})
  ckpt.close()
  for path in (directory / "2" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":  # Cut short.
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  ckpt = checkpoints.GenerationCheckpoints(directory)
  with caplog.at_level("WARNING"):
    step, _, _ = ckpt.restore_latest(jax.eval_shape(lambda: state))
  ckpt.close()
  assert step == 1
  warnings = [r.getMessage() for r in caplog.records
              if "is unreadable" in r.getMessage()]
  assert len(warnings) == 1 and "tensorstore_spec" not in warnings[0]
  assert len(warnings[0]) < short_errors.LIMIT + 400
