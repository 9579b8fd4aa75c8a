"""The born-again chain end to end on the digits, with tiny settings."""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from etils import epath

from ban_jax import errors
from ban_jax import models
from ban_jax import pipeline
from ban_jax import train
from ban_jax import validation
from ban_jax.runtime import checkpoints
from ban_jax.runtime import parallel
from ban_jax.runtime import preemption
from tests import run_results
from tests.run_results import scores as _scores


class FitSpy:
  """Wraps train.fit, keeping host copies of what each generation got."""

  def __init__(self, monkeypatch):
    self.calls = []
    self._fit = train.fit
    monkeypatch.setattr(train, "fit", self)

  def __call__(self, trainer, state, teacher_vars, *args, generation, **kw):
    self.calls.append({
        "generation": generation,
        "has_teacher_module": trainer.teacher is not None,
        "teacher_vars": (None if teacher_vars is None
                         else parallel.fetch(teacher_vars)),
        "initial_params": parallel.fetch(state.params),
        "initial_step": int(parallel.fetch(state.step)),
    })
    return self._fit(trainer, state, teacher_vars, *args,
                     generation=generation, **kw)


def _final_variables(workdir, generation, config, share=False):
  """The checkpointed final variables of a generation, read with Orbax.

  `share`: a student trained with config.share_stem_classifier, whose
  optimiser state has the frozen layers' masked shape.
  """
  data = pipeline.train.put_dataset(
      pipeline.load_dataset(config.data), parallel.make_mesh(),
      config.eval_batch_size)
  teacher = (pipeline.build_model(config.model.name, config, data.num_classes)
             if share else None)
  trainer = pipeline._trainer({}, config, config.model.name, teacher, share,
                              data, parallel.make_mesh())
  ckpt = checkpoints.GenerationCheckpoints(
      epath.Path(workdir) / "seed_0" / f"gen_{generation}" / "checkpoints")
  step, state, _ = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  assert step == trainer.total_steps
  return parallel.fetch(state.variables)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_digits_config):
  """One uninterrupted two-generation run, with the fit calls recorded."""
  monkeypatch = pytest.MonkeyPatch()
  spy = FitSpy(monkeypatch)
  # The step compiles once for generation 0 (labels) and once for the
  # students, which share it: a third trace (a retrace per epoch or per
  # generation) fails the run.
  chex.clear_trace_counter()
  monkeypatch.setattr(train, "student_update",
                      chex.assert_max_traces(train.student_update, n=2))
  workdir = tmp_path_factory.mktemp("chain")
  config = tiny_digits_config()
  results = run_results.run_chain(config, workdir)
  monkeypatch.undo()
  return config, workdir, results, spy.calls


def test_generation_zero_learns_from_labels_only(chain):
  _, _, results, calls = chain
  assert calls[0]["generation"] == 0
  assert calls[0]["teacher_vars"] is None
  assert not calls[0]["has_teacher_module"]
  assert results["generations"][0]["loss"] == "ce"
  assert "teacher_agreement" not in results["generations"][0]["test_metrics"]


def test_each_teacher_is_the_previous_generation(chain):
  config, workdir, _, calls = chain
  assert [c["generation"] for c in calls] == [0, 1, 2]
  for call in calls[1:]:
    expected = _final_variables(workdir, call["generation"] - 1, config)
    jax.tree.map(np.testing.assert_array_equal, call["teacher_vars"],
                 expected)


def test_each_student_starts_fresh(chain):
  _, _, _, calls = chain
  for call in calls[1:]:
    assert call["initial_step"] == 0
    teacher = jax.tree.leaves(call["teacher_vars"]["params"])
    student = jax.tree.leaves(call["initial_params"])
    assert len(teacher) == len(student)
    # Every weight matrix differs (biases and BN scales start equal).
    differing = [not np.array_equal(t, s) for t, s in zip(teacher, student)]
    kernels = [t.ndim > 1 for t in teacher]
    assert all(d for d, k in zip(differing, kernels) if k)
  # And the students of generations 1 and 2 differ from each other.
  assert not np.array_equal(
      calls[1]["initial_params"]["stem"]["kernel"],
      calls[2]["initial_params"]["stem"]["kernel"])


def test_results_files(chain):
  _, workdir, results, _ = chain
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["generations"][1]["test_error"] == pytest.approx(
      100 - on_disk["generations"][1]["test_accuracy"])
  assert [g["name"] for g in on_disk["generations"]] == [
      "Teacher", "BAN-1", "BAN-2"]
  assert [(e["name"], e["members"]) for e in on_disk["ensembles"]] == [
      ("Ens*2", [1, 2])]
  assert on_disk["config"]["num_generations"] == 2
  assert on_disk["devices"] == "1 x cpu"  # run_results.run_chain's one.
  table = (workdir / "results.md").read_text()
  assert "| Teacher | BAN-1 | BAN-2 | Ens*2 |" in table
  row = f"{results['generations'][2]['test_error']:.2f}"
  assert row in table
  # The learnt teacher is much better than chance (10 classes).
  assert results["generations"][0]["test_accuracy"] > 80
  # Each epoch reports the rate it trained at: 0.05, then 0.2 x 0.05 from
  # epoch 2 (config.optim.lr_decay_epochs = (1,)); 21 steps an epoch.
  for generation in results["generations"]:
    assert [(r["epoch"], r["step"]) for r in generation["history"]] == [
        (1, 21), (2, 42)]
    assert [r["learning_rate"] for r in generation["history"]] == (
        pytest.approx([0.05, 0.01]))
    # The whole run's time left: the last generation's last epoch ends it.
    assert all(r["chain_seconds_left"] >= 0 for r in generation["history"])
  assert results["generations"][2]["history"][-1]["chain_seconds_left"] == 0
  assert on_disk["seconds"]["total"] == pytest.approx(sum(
      on_disk["seconds"]["generations"].values()))
  assert list(on_disk["seconds"]["generations"]) == [
      "seed_0/gen_0", "seed_0/gen_1", "seed_0/gen_2"]


def test_ensemble_averages_probabilities(chain):
  config, workdir, results, _ = chain
  data = pipeline.load_dataset(config.data)
  probs = []
  for generation in (1, 2):
    variables = _final_variables(workdir, generation, config)
    module = pipeline.build_model(config.model.name, config, 10)
    logits = module.apply(variables, pipeline.train.augment.normalize(
        data.test_images, data.mean, data.std), train=False)
    probs.append(np.asarray(jax.nn.softmax(logits)))
  expected = np.mean((np.mean(probs, 0).argmax(-1) == data.test_labels)) * 100
  assert results["ensembles"][0]["test_accuracy"] == pytest.approx(
      expected, abs=1e-9)


def test_rerun_loads_finished_generations(chain, monkeypatch):
  config, workdir, results, _ = chain
  spy = FitSpy(monkeypatch)

  def written():
    return {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
            if p.is_file() and "compile_cache" not in p.parts}

  before = written()
  again = run_results.run_chain(config, workdir)
  assert spy.calls == []  # Nothing retrained.
  assert _scores(again) == _scores(results)
  # Nor rewritten: the same results leave every file as it was (so a
  # read-only copy of a finished workdir can be rerun).
  assert written() == before


def _read_only(folder, read_only=True):
  for path in [folder, *folder.rglob("*")]:
    if path.is_dir():
      path.chmod(0o555 if read_only else 0o755)
    else:
      path.chmod(0o444 if read_only else 0o644)


def test_a_finished_chain_reruns_from_a_read_only_copy(tmp_path):
  """Rerunning a finished chain needs no write access to its workdir.

  The chain is the command's own, not the `chain` fixture's: a process
  with one CPU device evaluates the last bits of a KL divergence unlike
  this one with eight (XLA splits work over threads by the device count),
  and a rerun that computes other numbers must write them.
  """
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "ban_jax.main",
             "--config=configs/digits.py", "--config.model.name=wrn10_1",
             "--config.num_generations=2", "--config.num_epochs=2",
             "--config.optim.lr_decay_epochs=(1,)"]
  run = functools.partial(
      subprocess.run, cwd=pathlib.Path(__file__).parents[1],
      env={**os.environ,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
      capture_output=True, text=True, timeout=300)
  first = run(command + [f"--workdir={workdir}"])
  assert first.returncode == 0, first.stderr[-3000:]
  copy = tmp_path / "read_only"
  shutil.copytree(workdir, copy)
  _read_only(copy)
  try:
    run_results.skip_unless_modes_bind(copy)
    again = run(run_results.obeying_file_modes(
        command + [f"--workdir={copy}"]))
  finally:
    _read_only(copy, read_only=False)
  assert again.returncode == 0, again.stderr[-3000:]
  for generation in range(3):
    assert (f"Generation {generation}: finished earlier; loaded from its "
            "final checkpoint" in again.stderr)
  assert " epoch 1/" not in again.stderr  # Nothing trained.
  assert f"Results: {copy}/results.md" in again.stderr
  assert (copy / "results.json").read_bytes() == (
      workdir / "results.json").read_bytes()


def _after_epoch(monkeypatch, generation, epoch, action):
  """Calls `action()` once `generation` has logged `epoch` (and saved it)."""
  log_epoch = pipeline._log_epoch

  def log_then_act(index, num_epochs):
    log = log_epoch(index, num_epochs)

    def maybe_act(record):
      log(record)
      if (index, record["epoch"]) == (generation, epoch):
        action()
    return maybe_act

  monkeypatch.setattr(pipeline, "_log_epoch", log_then_act)


def test_resume_after_a_crash_mid_generation(chain, tmp_path, monkeypatch):
  config, _, results, _ = chain

  def crash():
    raise KeyboardInterrupt("simulated crash")
  _after_epoch(monkeypatch, generation=1, epoch=1, action=crash)
  with pytest.raises(KeyboardInterrupt):
    run_results.run_chain(config, tmp_path)
  assert (tmp_path / "seed_0" / "gen_0" / "result.json").exists()
  assert not (tmp_path / "seed_0" / "gen_1" / "result.json").exists()
  monkeypatch.undo()

  spy = FitSpy(monkeypatch)
  resumed = run_results.run_chain(config, tmp_path)
  # Generation 0 is loaded, generation 1 continues after its first epoch.
  assert [(c["generation"], c["initial_step"]) for c in spy.calls] == [
      (1, 21), (2, 0)]
  assert _scores(resumed) == _scores(results)  # Exactly, on CPU.


@pytest.fixture(name="no_stop_request")
def _no_stop_request():
  preemption.reset()
  yield
  preemption.reset()


def _request_stop_after(monkeypatch, generation, epoch):
  """Asks to stop, as SIGTERM would, once `generation` logs `epoch`."""
  _after_epoch(monkeypatch, generation, epoch,
               lambda: preemption.request("SIGTERM"))


def test_a_stop_request_checkpoints_the_step_reached(
    chain, tmp_path, monkeypatch, no_stop_request):  # pylint: disable=unused-argument
  config, _, results, _ = chain
  _request_stop_after(monkeypatch, generation=1, epoch=1)
  with pytest.raises(preemption.StopRequested) as stop:
    run_results.run_chain(config, tmp_path)
  # One call (one step on the digits) after the request, mid-epoch 2.
  checkpoints_1 = tmp_path.resolve() / "seed_0" / "gen_1" / "checkpoints"
  assert str(stop.value) == (
      f"Stopped by SIGTERM in generation 1 at step 22, checkpointed in "
      f"{checkpoints_1}/22. Rerun the same command to continue from there.")
  assert stop.value.exit_status == 143
  assert checkpoints.GenerationCheckpoints(checkpoints_1).all_steps() == [
      21, 22]
  monkeypatch.undo()

  # The request that stopped it does not stop the next run in this process.
  spy = FitSpy(monkeypatch)
  resumed = run_results.run_chain(config, tmp_path)
  assert [(c["generation"], c["initial_step"]) for c in spy.calls] == [
      (1, 22), (2, 0)]
  assert _scores(resumed) == _scores(results)  # Exactly, on CPU.


def test_a_stop_request_after_the_last_step_stops_before_the_next_generation(
    tmp_path, monkeypatch, no_stop_request,  # pylint: disable=unused-argument
    tiny_digits_config):
  config = tiny_digits_config(num_generations=1)
  _request_stop_after(monkeypatch, generation=0, epoch=2)  # Its last epoch.
  spy = FitSpy(monkeypatch)
  with pytest.raises(preemption.StopRequested,
                     match="^Stopped by SIGTERM before training generation "
                     "1; the generations before it are finished"):
    run_results.run_chain(config, tmp_path)
  assert [c["generation"] for c in spy.calls] == [0]
  assert (tmp_path / "seed_0" / "gen_0" / "result.json").exists()


def test_extending_a_finished_chain(chain, tmp_path, tiny_digits_config):
  config, _, results, _ = chain
  short = run_results.run_chain(tiny_digits_config(num_generations=1),
                                tmp_path)
  assert len(short["generations"]) == 2 and short["ensembles"] == []
  extended = run_results.run_chain(config, tmp_path)
  assert _scores(extended) == _scores(results)


def test_changed_settings_in_an_old_workdir_are_refused(chain,
                                                         tiny_digits_config):
  config, workdir, _, _ = chain
  config = tiny_digits_config()
  config.optim.learning_rate = 0.2
  with pytest.raises(validation.ConfigError) as error:
    run_results.run_chain(config, workdir)
  assert str(error.value) == (
      f"{workdir} holds generations trained with other settings "
      "(optim.learning_rate: 0.05 there, 0.2 now). Use a new --workdir, or "
      f"rerun with the settings in {workdir}/config.json.")


def test_a_workdir_binds_its_settings_once_a_generation_is_checkpointed(
    tmp_path, tiny_digits_config):
  check = pipeline._check_workdir_config  # pylint: disable=protected-access
  workdir = epath.Path(tmp_path)
  first = tiny_digits_config()
  check(workdir, first)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["optim"]["learning_rate"] == 0.05

  # A run that stopped before its first checkpoint (say, the data was
  # missing) binds nothing: the corrected command replaces config.json.
  gen_0 = tmp_path / "seed_0" / "gen_0" / "checkpoints"
  (gen_0 / "3.orbax-checkpoint-tmp").mkdir(parents=True)  # Unfinished.
  second = tiny_digits_config()
  second.optim.learning_rate = 0.01
  second.batch_size = 32
  check(workdir, second)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["optim"]["learning_rate"] == 0.01 and saved["batch_size"] == 32

  # Once a step is checkpointed, other settings are refused, naming each.
  (gen_0 / "21").mkdir()
  with pytest.raises(validation.ConfigError,
                     match=r"\(batch_size: 32 there, 64 now; "
                     r"optim.learning_rate: 0.01 there, 0.05 now\)"):
    check(workdir, first)
  # Where the data is, and how long the chain runs, may change.
  moved = tiny_digits_config(num_generations=5)
  moved.optim.learning_rate = 0.01
  moved.batch_size = 32
  moved.data.archive_path = "/elsewhere/cifar-10-python.tar.gz"
  check(workdir, moved)


def test_a_config_json_from_before_a_field_existed_reads_its_default(
    tmp_path, tiny_digits_config):
  check = pipeline._check_workdir_config  # pylint: disable=protected-access
  config = tiny_digits_config()
  check(epath.Path(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["distill"]["dkpp_permutation"]
  del saved["data"]["max_train_examples"], saved["data"]["max_test_examples"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "seed_0" / "gen_0" / "checkpoints" / "21").mkdir(parents=True)
  check(epath.Path(tmp_path), config)  # The defaults: the same settings.
  config.distill.dkpp_permutation = "step"
  with pytest.raises(validation.ConfigError,
                     match=r"\(distill.dkpp_permutation: 'example' there, "
                     r"'step' now\)"):
    check(epath.Path(tmp_path), config)


def test_an_unreadable_config_json(tmp_path, tiny_digits_config):
  check = pipeline._check_workdir_config  # pylint: disable=protected-access
  workdir = epath.Path(tmp_path)
  (tmp_path / "config.json").write_text('{"seed": 0, "data": {"na')
  # Nothing trained there yet: it is replaced, as a changed one would be.
  check(workdir, tiny_digits_config())
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
  assert not list(tmp_path.glob(".*.tmp"))  # Written whole, then renamed.

  # With a generation trained, the settings cannot be checked: refused.
  (tmp_path / "config.json").write_text("")
  (tmp_path / "seed_0" / "gen_0" / "checkpoints" / "21").mkdir(parents=True)
  with pytest.raises(validation.ConfigError) as error:
    check(workdir, tiny_digits_config())
  assert str(error.value).startswith(
      f"{tmp_path}/config.json cannot be read (Expecting value: line 1 "
      f"column 1 (char 0)), so the settings of the generations trained in "
      f"{tmp_path} cannot be checked. Restore it")
  assert (tmp_path / "config.json").read_text() == ""  # Left as it was.


def test_a_run_that_fails_before_training_leaves_the_workdir_usable(
    tmp_path, tiny_digits_config):
  too_big = tiny_digits_config()
  too_big.batch_size = 4096
  with pytest.raises(validation.ConfigError,
                     match="batch_size=4096 is larger than the 1347 training "
                     "examples of digits; use at most 1347."):
    run_results.run_chain(too_big, tmp_path)
  assert not list(tmp_path.glob("seed_*/gen_*/checkpoints/*"))
  fixed = tiny_digits_config(num_generations=1)
  fixed.num_epochs = 1
  fixed.optim.lr_decay_epochs = ()
  assert len(run_results.run_chain(fixed, tmp_path)["generations"]) == 2


def test_shared_stem_and_classifier_stay_the_teachers(tmp_path,
                                                      tiny_digits_config):
  # Table 5's setting: the student starts from the teacher's first conv and
  # classifier and never changes them; everything else trains.
  config = tiny_digits_config(num_generations=1)
  config.num_epochs = 1
  config.optim.lr_decay_epochs = ()
  config.share_stem_classifier = True
  run_results.run_chain(config, tmp_path)
  teacher = _final_variables(tmp_path, 0, config)["params"]
  student = _final_variables(tmp_path, 1, config, share=True)["params"]
  for name in ("stem", "classifier"):
    jax.tree.map(np.testing.assert_array_equal, student[name], teacher[name])
  assert not np.allclose(student["stage0_block0"]["Conv_0"]["kernel"],
                         teacher["stage0_block0"]["Conv_0"]["kernel"])


def test_an_old_workdir_without_the_new_fields_is_accepted(
    tmp_path, tiny_digits_config):
  # A workdir from before seed_scope and student_baseline existed: it ran
  # "chain" and trained no Baseline, so the defaults continue it.
  check = pipeline._check_workdir_config  # pylint: disable=protected-access
  saved = tiny_digits_config().to_dict()
  del saved["seed_scope"], saved["student_baseline"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "seed_0" / "gen_0" / "checkpoints" / "21").mkdir(parents=True)
  check(epath.Path(tmp_path), tiny_digits_config())
  # The Baseline may be added to (or dropped from) a trained workdir; the
  # scope may not change.
  added = tiny_digits_config()
  added.student_baseline = True
  check(epath.Path(tmp_path), added)
  students = tiny_digits_config()
  students.seed_scope = "students"
  with pytest.raises(validation.ConfigError,
                     match=r"\(seed_scope: 'chain' there, 'students' now\)"):
    check(epath.Path(tmp_path), students)


# ------------------------------------------- Table 5's Baseline column


def _tiny_table5_student(monkeypatch):
  """densewrn students shaped like densenet16_4 (test_models.py's pair):
  the same stem (3x3, 8 channels) and classifier (16 -> 10) on digits."""
  get_model = models.get_model

  def get(name, num_classes, **kwargs):
    if name.startswith("densewrn"):
      kwargs = {"dense_depth": 16, "dense_growth": 4, **kwargs}
    return get_model(name, num_classes, **kwargs)
  monkeypatch.setattr(models, "get_model", get)


def _final_params(workdir, folder, config, name, teacher_name, share):
  """The checkpointed final params in `<workdir>/<folder>`, read with the
  trainer of that network (`teacher_name`: the teacher it learnt from)."""
  mesh = parallel.make_mesh()
  data = train.put_dataset(pipeline.load_dataset(config.data), mesh,
                           config.eval_batch_size)
  teacher = (pipeline.build_model(teacher_name, config, data.num_classes)
             if teacher_name else None)
  trainer = pipeline._trainer({}, config, name, teacher, share, data, mesh,
                              generation=int(folder != "seed_0/gen_0"))
  ckpt = checkpoints.GenerationCheckpoints(
      epath.Path(workdir) / folder / "checkpoints")
  step, state, _ = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  assert step == trainer.total_steps
  return parallel.fetch(state.params)


@pytest.fixture(scope="module")
def table5(tmp_path_factory, tiny_digits_config, unoptimised_xla):
  """densenet16_4 -> densewrn1_0.25 sharing stem and classifier, with the
  Baseline; stopped after the Baseline's first epoch, then resumed.
  Compiled unoptimised: no other test compiles these networks."""
  monkeypatch = pytest.MonkeyPatch()
  _tiny_table5_student(monkeypatch)
  config = tiny_digits_config(num_generations=1)
  config.model.name = "densenet16_4"
  config.student_model = "densewrn1_0.25"
  config.share_stem_classifier = True
  config.student_baseline = True
  config.paper_row = "table5/densenet90_60/densewrn1_1"
  workdir = tmp_path_factory.mktemp("table5")

  def crash():
    raise KeyboardInterrupt("simulated crash")
  with unoptimised_xla():
    with pytest.MonkeyPatch.context() as crashing:
      first = FitSpy(crashing)
      _after_epoch(crashing, generation="baseline", epoch=1, action=crash)
      with pytest.raises(KeyboardInterrupt):
        run_results.run_chain(config, workdir)
    with pytest.MonkeyPatch.context() as resuming:
      second = FitSpy(resuming)
      results = run_results.run_chain(config, workdir)
  yield config, workdir, results, first.calls, second.calls
  monkeypatch.undo()


def test_the_baseline_trains_after_the_teacher_and_resumes(table5):
  _, workdir, results, first, second = table5
  assert [(c["generation"], c["initial_step"]) for c in first] == [
      (0, 0), ("baseline", 0)]
  # The teacher is loaded; the Baseline resumes, BAN-1 starts.
  assert [(c["generation"], c["initial_step"]) for c in second] == [
      ("baseline", 21), (1, 0)]
  assert (workdir / "seed_0" / "baseline" / "result.json").exists()
  assert [g["name"] for g in results["generations"]] == ["Teacher", "BAN-1"]
  assert results["per_seed"][0]["baseline"] == results["baseline"]


@pytest.mark.few_steps  # Its networks as table5 compiled them.
def test_the_baseline_learns_from_labels_with_the_teachers_frozen_layers(
    table5):
  config, workdir, results, first, second = table5
  baseline = results["baseline"]
  assert (baseline["name"], baseline["model"], baseline["loss"],
          baseline["generation"]) == ("Baseline", "densewrn1_0.25", "ce",
                                      None)
  assert "teacher_agreement" not in baseline["test_metrics"]
  assert results["generations"][1]["loss"] == "kd"  # BAN-1: the teacher's.
  # No teacher network in its step, no teacher outputs.
  for call in (first[1], second[0]):
    assert not call["has_teacher_module"] and call["teacher_vars"] is None
  assert second[1]["has_teacher_module"]  # BAN-1 still learns from it.
  teacher = _final_params(workdir, "seed_0/gen_0", config, "densenet16_4",
                          None, False)
  for folder in ("baseline", "gen_1"):
    student = _final_params(workdir, f"seed_0/{folder}", config,
                            "densewrn1_0.25",
                            None if folder == "baseline" else "densenet16_4",
                            True)
    for name in ("stem", "classifier"):
      jax.tree.map(np.testing.assert_array_equal, student[name],
                   teacher[name])
  # Its own initialisation, not BAN-1's: every other kernel differs.
  start, ban_start = first[1]["initial_params"], second[1]["initial_params"]
  for name in start:
    kernels = [(a, b) for a, b in zip(jax.tree.leaves(start[name]),
                                      jax.tree.leaves(ban_start[name]))
               if a.ndim > 1]
    for a, b in kernels:
      assert np.array_equal(a, b) == (name in ("stem", "classifier")), name


def test_the_baseline_column_beside_the_papers(table5):
  _, workdir, results, _, _ = table5
  text = (workdir / "results.md").read_text()
  baseline = results["baseline"]["test_error"]
  ban = results["generations"][1]["test_error"]
  assert "| Model | Teacher | Baseline | BAN-1 |" in text
  assert f"| {baseline:.2f} | {ban:.2f} |" in text
  # The paper's Baseline and BAN lined up under ours; no teacher number.
  assert ("| Paper, Table 5 (`table5/densenet90_60/densewrn1_1`) | – | "
          "20.40 | 19.12 |") in text
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["baseline"]["test_error"] == baseline
  assert on_disk["paper"]["test_error"] == {"Baseline": 20.4, "BAN-1": 19.12}
  assert [c["name"] for c in on_disk["over_seeds"]] == [
      "Teacher", "Baseline", "BAN-1"]


@pytest.mark.few_steps  # Its networks as table5 compiled them.
def test_a_rerun_loads_the_baseline(table5, monkeypatch):
  config, workdir, results, _, _ = table5
  _tiny_table5_student(monkeypatch)
  spy = FitSpy(monkeypatch)
  again = run_results.run_chain(config, workdir)
  assert spy.calls == []
  assert again["baseline"] == results["baseline"]
  assert _scores(again) == _scores(results)


# ------------------------------------------- one teacher for all seeds


@pytest.fixture(scope="module")
def students(tmp_path_factory, tiny_digits_config):
  """seed_scope="students", seeds (0, 1): stopped in seed 1's BAN-1 after
  its first epoch, then resumed."""
  config = tiny_digits_config(num_generations=1)
  config.seeds = (0, 1)
  config.seed_scope = "students"
  workdir = tmp_path_factory.mktemp("students")
  ends = []

  def crash_in_the_second_ban_1():
    ends.append(1)
    if len(ends) == 2:  # Seed 0's BAN-1 logs epoch 1 first.
      raise KeyboardInterrupt("simulated crash")
  with pytest.MonkeyPatch.context() as crashing:
    first = FitSpy(crashing)
    _after_epoch(crashing, generation=1, epoch=1,
                 action=crash_in_the_second_ban_1)
    with pytest.raises(KeyboardInterrupt):
      run_results.run_chain(config, workdir)
  with pytest.MonkeyPatch.context() as resuming:
    second = FitSpy(resuming)
    results = run_results.run_chain(config, workdir)
  return config, workdir, results, first.calls, second.calls


def test_one_teacher_teaches_every_seed(students):
  _, workdir, results, first, second = students
  # One teacher trained; seed 1 resumes its BAN-1 and trains no teacher.
  assert [c["generation"] for c in first] == [0, 1, 1]
  assert [(c["generation"], c["initial_step"]) for c in second] == [(1, 21)]
  assert not (workdir / "seed_1" / "gen_0").exists()
  assert json.loads((workdir / "seed_1" / "teacher.json").read_text()) == {
      "teacher": "seed_0/gen_0"}
  assert not (workdir / "seed_0" / "teacher.json").exists()
  # Both seeds' BAN-1 got the same teacher's variables.
  for call in (first[2], second[0]):
    jax.tree.map(np.testing.assert_array_equal, call["teacher_vars"],
                 first[1]["teacher_vars"])
  seed_0, seed_1 = results["per_seed"]
  assert seed_0["generations"][0] == seed_1["generations"][0]
  assert seed_1["generations"][0]["seed"] == 0
  # Two students: their own initialisation and their own results.
  assert not np.array_equal(first[1]["initial_params"]["stem"]["kernel"],
                            first[2]["initial_params"]["stem"]["kernel"])
  assert (seed_0["generations"][1]["history"][0]["train_loss"]
          != seed_1["generations"][1]["history"][0]["train_loss"])


def test_the_report_says_the_seeds_varied_only_the_students(students):
  _, workdir, results, _, _ = students
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["seed_scope"] == "students"
  teacher, ban_1 = on_disk["over_seeds"]
  error = results["generations"][0]["test_error"]
  assert (teacher["name"], teacher["test_errors"], teacher["seeds"],
          teacher["test_error_std"]) == ("Teacher", [error], [0], 0.0)
  assert ban_1["seeds"] == [0, 1] and len(ban_1["test_errors"]) == 2
  text = (workdir / "results.md").read_text()
  assert f"| {error:.2f} (one run) | {ban_1['test_error_mean']:.2f} ± " in (
      text)
  assert "Seed scope `students`: one teacher, trained once with seed 0" in (
      text)


def test_a_students_rerun_loads_everything(students, monkeypatch):
  config, workdir, results, _, _ = students
  spy = FitSpy(monkeypatch)
  again = run_results.run_chain(config, workdir)
  assert spy.calls == []
  assert again["per_seed"] == results["per_seed"]
  # Reordered seeds would make seed 1 the teacher of seed 0's students.
  reordered = config.copy_and_resolve_references()
  reordered.seeds = (1, 0)
  with pytest.raises(errors.WorkdirError,
                     match="The students in .*seed_1 learn from the teacher "
                     "in seed_0/gen_0, not seed_1/gen_0"):
    run_results.run_chain(reordered, workdir)
  assert spy.calls == []


def test_build_model_scans_densenet_layers_and_says_what_else_ignores_it(
    tiny_digits_config, caplog):
  config = tiny_digits_config()
  config.model.layers_per_scan = 4
  densenet = pipeline.build_model("densenet16_4", config, 10)
  assert densenet.layers_per_scan == 4
  # A Wide-ResNet has nothing to scan: built as always, with a warning.
  with caplog.at_level("WARNING"):
    wrn = pipeline.build_model("wrn10_1", config, 10)
  assert not hasattr(wrn, "layers_per_scan")
  assert "model.layers_per_scan=4 is ignored" in caplog.text
  config.model.layers_per_scan = 1
  caplog.clear()
  with caplog.at_level("WARNING"):
    assert pipeline.build_model("densenet16_4", config,
                                10).layers_per_scan == 1
    pipeline.build_model("wrn10_1", config, 10)
  assert "layers_per_scan" not in caplog.text
