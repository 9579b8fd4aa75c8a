"""The command line: mistakes end with one clear message, no traceback."""

import os
import subprocess
import sys

from ban_jax import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_misspelt_field_names_it_and_lists_the_valid_ones():
  message = main.unknown_field_message(
      ["prog", "--config=configs/digits.py", "--config.num_generations=2",
       "--config.distill.tempreature=2"])
  assert message.startswith(
      "Unknown config field config.distill.tempreature")
  assert "Valid fields of config.distill:" in message
  assert "temperature" in message and "loss" in message


def test_config_argument_is_used_to_find_fields():
  message = main.unknown_field_message(
      ["prog", "--config=configs/cifar100.py:smoke", "--config.data.sorce=x"])
  assert "config.data.sorce" in message and "archive_path" in message


def _run(*args):
  return subprocess.run(
      [sys.executable, "-m", "ban_jax.main", *args], cwd=ROOT,
      capture_output=True, text=True, timeout=120,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})


def test_command_line_errors(tmp_path):
  typo = _run("--config=configs/digits.py", f"--workdir={tmp_path}",
              "--config.num_generatons=2")
  assert typo.returncode != 0
  assert "Unknown config field config.num_generatons" in typo.stderr
  assert "num_generations" in typo.stderr
  assert "Traceback" not in typo.stderr

  model = _run("--config=configs/digits.py", f"--workdir={tmp_path}",
               "--config.model.name=wrn_big")
  assert model.returncode != 0
  assert "ERROR: config.model.name: Unknown model 'wrn_big'" in model.stderr
  assert "wrn28_10" in model.stderr and "densenet90_60" in model.stderr
  assert "Traceback" not in model.stderr
  assert not (tmp_path / "seed_0").exists()  # Failed before any compute.
