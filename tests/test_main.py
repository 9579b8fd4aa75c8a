"""The command line: mistakes end with one clear message, no traceback."""

import logging
import os
import signal
import subprocess
import sys
import types

import pytest

from ban_jax import config_file
from ban_jax import main
from ban_jax.runtime import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
  """main() takes SIGTERM and SIGINT (ban_jax.runtime.preemption): give them back."""
  handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  yield
  for signum, handler in handlers.items():
    signal.signal(signum, handler)


def test_misspelt_field_names_it_and_lists_the_valid_ones():
  message = config_file.unknown_field_message(
      ["prog", "--config=configs/digits.py", "--config.num_generations=2",
       "--config.distill.tempreature=2"])
  assert message.startswith(
      "Unknown config field config.distill.tempreature")
  assert "Valid fields of config.distill:" in message
  assert "temperature" in message and "loss" in message


def test_config_argument_is_used_to_find_fields():
  message = config_file.unknown_field_message(
      ["prog", "--config=configs/cifar100.py:smoke", "--config.data.sorce=x"])
  assert "config.data.sorce" in message and "archive_path" in message


def test_config_spec_takes_the_last_config():
  spec = config_file.config_spec  # pylint: disable=protected-access
  assert spec(["prog", "--config=a.py", "--config", "b.py:x",
               "--config=c.py:y"]) == ("c.py", "y")
  assert spec(["prog", "--config=a.py", "--config"]) == ("a.py", "")
  assert spec(["prog", "--config"]) is None


def test_fields_come_from_the_config_with_its_argument(tmp_path):
  path = tmp_path / "argued.py"
  path.write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      "  config = ml_collections.ConfigDict({'a': 1})\n"
      "  if arg == 'big':\n"
      "    config.b = 2\n"
      "  return config\n")
  assert config_file.unknown_field_message(
      ["prog", f"--config={path}:big", "--config.b=3"]) is None
  assert config_file.unknown_field_message(
      ["prog", f"--config={path}", "--config.b=3"]) == (
          "Unknown config field config.b (in --config.b=3). Valid fields of "
          "config: a.")
  # A field under a value that has none.
  assert config_file.unknown_field_message(
      ["prog", f"--config={path}", "--config.a.x=3"]) == (
          "Unknown config field config.a.x (in --config.a.x=3). Valid fields "
          "of config.a: .")


def test_an_attribute_error_in_get_config_is_not_a_missing_get_config(
    tmp_path):
  path = tmp_path / "buggy.py"
  path.write_text("def get_config():\n  return None.fields\n")
  assert config_file.config_file_message(["prog", f"--config={path}"]) == (
      f"ERROR: config file '{path}' cannot be loaded: AttributeError: "
      "'NoneType' object has no attribute 'fields'. Fix it, or pass one of "
      "the repository's configs/, e.g. --config=configs/digits.py.")


def test_flag_errors_lose_the_traceback_but_not_the_first_line():
  message = ("Flag --config: could not load it\nTraceback (most recent call "
             "last):\n  File \"x.py\", line 1\n\nValueError: bad\n")
  without_traceback = config_file.without_traceback  # pylint: disable=protected-access
  assert without_traceback(message) == (
      "Flag --config: could not load it\nValueError: bad")
  assert without_traceback("a\nb") == "a\nb"


def test_orbax_info_is_dropped_and_its_warnings_kept():
  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "msg", None, None)

  quiet = logs.quiet_orbax  # pylint: disable=protected-access
  assert not quiet(record(logging.INFO, "/site/orbax/checkpoint/x.py"))
  assert quiet(record(logging.WARNING, "/site/orbax/checkpoint/x.py"))
  assert quiet(record(logging.INFO, "/repo/ban_jax/train.py"))
  # Orbax's errors stay, without the traceback it repeats at every level.
  try:
    raise ValueError("RESOURCE_EXHAUSTED: disk full")
  except ValueError:
    error = logging.LogRecord("absl", logging.ERROR, "/site/orbax/c.py", 1,
                              "save failed", None, sys.exc_info())
  ours = logging.LogRecord("absl", logging.ERROR, "/repo/ban_jax/x.py", 1,
                           "ours", None, error.exc_info)
  assert quiet(error) and error.exc_info is None
  assert quiet(ours) and ours.exc_info is not None


def test_only_orbax_echoes_of_a_failed_write_are_unraisable_noise(
    monkeypatch):
  shown = []
  monkeypatch.setattr(sys, "__unraisablehook__", shown.append)

  def unraisable(error):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                 exc_traceback=None, err_msg=None, object=None)

  echoes = [RuntimeError("Event loop is closed"),
            ImportError("sys.meta_path is None, Python is likely shutting "
                        "down")]
  others = [RuntimeError("Event loop is closed, and more"),
            ValueError("Event loop is open")]
  for error in echoes + others:
    logs.unraisable(unraisable(error))  # pylint: disable=protected-access
  assert [args.exc_value for args in shown] == others


@pytest.fixture(name="parsed")
def _parsed(tmp_path):
  """Flags parsed in this process for a digits run in tmp_path/w."""
  config_file.parse_flags(["prog", f"--config={ROOT}/configs/digits.py",
                    f"--workdir={tmp_path / 'w'}"])
  yield str(tmp_path / "w")
  main.flags.FLAGS.unparse_flags()


def test_known_errors_of_a_run_are_one_message(monkeypatch, parsed, capsys):
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from ban_jax import errors
  from ban_jax import pipeline
  from ban_jax.runtime import distributed
  # pylint: enable=g-import-not-at-top,import-outside-toplevel
  monkeypatch.setattr(distributed, "initialize", lambda: None)
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  disk_full = OSError(28, "No space left on device")
  for error, message in (
      (errors.ConfigError("bad value"), "bad value"),
      (errors.DataNotFoundError("no data here"), "no data here"),
      (errors.NonFiniteLossError("nan loss"), "nan loss"),
      (errors.UnsafePickleError("forbidden"), "forbidden"),
      (errors.UnreadableDataError("damaged"), "damaged"),
      (errors.WorkdirError("in use"), "in use"),
      (disk_full, "[Errno 28] No space left on device. Finished generations "
       "and their checkpoints are kept: fix that, then rerun the same "
       "command to go on.")):
    def run(config, workdir, error=error):
      assert (config.model.name, workdir) == ("wrn10_2", parsed)
      raise error
    monkeypatch.setattr(pipeline, "run", run)
    with pytest.raises(SystemExit) as stop:
      main.main(["prog"])
    assert stop.value.code == f"ERROR: {message}"
  assert sys.unraisablehook is logs.unraisable  # pylint: disable=protected-access

  def exit_of(error):
    """main()'s exit status and what it printed, when the run raises `error`."""
    def run(config, workdir):
      del config, workdir
      raise error
    monkeypatch.setattr(pipeline, "run", run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
      main.main(["prog"])
    return stop.value.code, capsys.readouterr().err

  # A stop request: its own line and the signal's exit status.
  from ban_jax.runtime import preemption  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  stopped = preemption.StopRequested("Stopped by SIGINT at step 7.", "SIGINT")
  assert exit_of(stopped) == (130, "STOPPED: Stopped by SIGINT at step 7.\n")
  assert signal.getsignal(signal.SIGINT) is preemption._handle  # pylint: disable=protected-access
  # A failed checkpoint write exits at once, not after Orbax's threads.
  monkeypatch.setattr(logs.os, "_exit", lambda status: sys.exit(status))
  assert exit_of(errors.CheckpointWriteError("disk full; rerun")) == (
      1, "ERROR: disk full; rerun\n")
  # Anything else is a bug: its traceback shows.
  monkeypatch.setattr(pipeline, "run", lambda config, workdir: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    main.main(["prog"])
  handler = logs.logging.get_absl_handler()
  quiet = logs.quiet_orbax  # pylint: disable=protected-access
  assert quiet in handler.filters  # main() quietens Orbax's INFO.
  handler.removeFilter(quiet)


def test_a_blank_workdir_is_refused(tmp_path):
  try:
    with pytest.raises(SystemExit) as stop:
      config_file.parse_flags(["prog", f"--config={ROOT}/configs/digits.py",
                        "--workdir=  "])
  finally:
    main.flags.FLAGS.unparse_flags()
  assert "--workdir is empty; name the run's folder" in str(stop.value.code)
  assert not list(tmp_path.iterdir())


def _run(*args, cwd=ROOT, env=None):
  return subprocess.run(
      [sys.executable, "-m", "ban_jax.main", *args], cwd=cwd,
      capture_output=True, text=True, timeout=120,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           **(env or {})})


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


def test_command_line_errors_about_files(tmp_path):
  missing = _run("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert missing.returncode != 0
  assert missing.stderr.strip() == (
      f"ERROR: config file 'configs/nope.py' not found (relative paths are "
      f"from {ROOT}). The configs are in the repository's configs/ folder, "
      "e.g. --config=configs/cifar100.py.")

  argument = _run("--config=configs/digits.py:smoke", f"--workdir={tmp_path}")
  assert argument.returncode != 0
  assert "configs/digits.py takes no argument (got 'smoke')" in argument.stderr
  assert "Traceback" not in argument.stderr

  (tmp_path / "a_file").write_text("")
  workdir = _run("--config=configs/digits.py", f"--workdir={tmp_path}/a_file")
  assert workdir.returncode != 0
  assert f"ERROR: Cannot use --workdir={tmp_path}/a_file: " in workdir.stderr
  assert "Traceback" not in workdir.stderr


@pytest.mark.parametrize("dataset, name", [("cifar10", "CIFAR-10"),
                                           ("cifar100", "CIFAR-100")])
def test_cifar_configs_load_from_any_working_directory(tmp_path, dataset,
                                                       name):
  # Only ban_jax on the import path: a PYTHONPATH holding the repository
  # (as some set-ups have) would make `from configs import` work anyway.
  path = tmp_path / "path"
  path.mkdir()
  (path / "ban_jax").symlink_to(os.path.join(ROOT, "ban_jax"))
  # No CIFAR here: the run gets as far as looking for the data.
  run = _run(f"--config={ROOT}/configs/{dataset}.py:smoke",
             f"--workdir={tmp_path / 'run'}",
             f"--config.data.data_dir={tmp_path / 'tfds'}", cwd=tmp_path,
             env={"PYTHONPATH": str(path)})
  assert run.returncode != 0
  assert "ModuleNotFoundError" not in run.stderr
  assert "ERROR: " in run.stderr and f"{name} not found" in run.stderr


def test_config_files_that_do_not_load(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  syntax = _run(f"--config={broken}", f"--workdir={tmp_path / 'w'}")
  assert syntax.returncode != 0
  assert syntax.stderr.strip().startswith(
      f"ERROR: config file '{broken}' cannot be loaded: SyntaxError: ")
  assert len(syntax.stderr.strip().splitlines()) == 1

  no_get_config = _run("--config=configs/cifar_base.py",
                       f"--workdir={tmp_path / 'w'}")
  assert no_get_config.returncode != 0
  assert no_get_config.stderr.strip() == (
      "ERROR: config file 'configs/cifar_base.py' has no get_config(). Pass "
      "a config file, e.g. --config=configs/cifar100.py.")
  assert not (tmp_path / "w").exists()


def test_an_empty_workdir_is_refused_not_taken_as_the_cwd(tmp_path):
  # --workdir=$DIR with DIR unset.
  empty = _run(f"--config={ROOT}/configs/digits.py", "--workdir=",
               cwd=tmp_path)
  assert empty.returncode != 0
  assert "--workdir is empty; name the run's folder" in empty.stderr
  assert not list(tmp_path.iterdir())


def test_config_given_as_two_words_gets_the_same_messages(tmp_path):
  # absl takes `--config PATH` as well as `--config=PATH`.
  missing = _run("--config", "configs/nope.py", "--workdir", str(tmp_path))
  assert missing.returncode != 0
  assert missing.stderr.strip().startswith(
      "ERROR: config file 'configs/nope.py' not found")

  typo = _run("--config", "configs/digits.py", "--workdir", str(tmp_path),
              "--config.num_generatons=2")
  assert typo.returncode != 0
  assert typo.stderr.strip().startswith(
      "Unknown config field config.num_generatons")
  assert "Traceback" not in missing.stderr + typo.stderr


def test_unreadable_archive_is_one_message(tmp_path):
  archive = tmp_path / "cifar-10-python.tar.gz"
  archive.write_bytes(b"not a tar")
  run = _run("--config=configs/cifar10.py:smoke",
             f"--workdir={tmp_path / 'run'}",
             f"--config.data.archive_path={archive}")
  assert run.returncode != 0
  errors = [line for line in run.stderr.splitlines()
            if line[:1] not in "IW"]  # absl's INFO and WARNING lines.
  assert errors == [line for line in errors if line.startswith("ERROR: ")]
  assert len(errors) == 1, run.stderr[-3000:]
  assert f"Could not read {archive} as a tar archive" in errors[0]
  assert "Download cifar-10-python.tar.gz again" in errors[0]


def test_malformed_multi_process_setting_is_one_message(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "ban_jax.main", "--config=configs/digits.py",
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
      text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "BAN_JAX_DISTRIBUTED": "2"})
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1] == (
      "ERROR: $BAN_JAX_DISTRIBUTED='2': use 0, 1 or auto.")
  assert "Traceback" not in run.stderr
  assert not (tmp_path / "run").exists()


def test_stray_arguments_are_one_message(tmp_path):
  stray = _run("--config=configs/digits.py", f"--workdir={tmp_path / 'w'}",
               "configs/digits.py")
  assert stray.returncode != 0
  assert stray.stderr.strip() == (
      "ERROR: unexpected arguments 'configs/digits.py': every setting is a "
      "flag, e.g. --config.num_epochs=2.")
  assert not (tmp_path / "w").exists()
