"""The run's time left and the epoch's progress bar (ban_jax.progress)."""

import sys

import pytest
from etils import epath

from ban_jax import pipeline
from ban_jax import progress
from tests import run_results


def test_the_whole_run_is_left_at_the_measured_rate():
  # Two seeds of a teacher and one student, 100 steps each.
  clock = progress.ChainClock(
      [((s, g), 100) for s in (0, 1) for g in (0, 1)])
  assert clock.seconds_left() is None  # Nothing measured yet.
  # The first epoch compiled: 10 steps in 5 s is all there is to go by.
  assert clock.epoch((0, 0), 10, 5.0, 90, compiled=True) == pytest.approx(
      0.5 * (90 + 300))
  # A warm epoch replaces it: 10 steps in 1 s.
  assert clock.epoch((0, 0), 10, 1.0, 80) == pytest.approx(0.1 * (80 + 300))
  assert clock.epoch((0, 0), 20, 3.0, 60) == pytest.approx(
      4.0 / 30 * (60 + 300))


def test_finished_and_resumed_generations_count_what_they_have_left():
  # Generation 0 loaded finished; generation 1 resumed at step 70 of 100.
  clock = progress.ChainClock([(0, 0), (1, 100), (2, 100)])
  assert clock.epoch(1, 10, 2.0, 20) == pytest.approx(0.2 * (20 + 100))
  clock.done(1)
  assert clock.steps_left() == 100
  assert clock.seconds_left() == pytest.approx(20.0)


def test_the_plan_leaves_out_generations_with_a_result(tmp_path,
                                                      tiny_digits_config):
  config = tiny_digits_config(num_generations=1, num_epochs=2)
  config.seeds = (3, 4)
  config.batch_size = 32
  (tmp_path / "seed_3" / "gen_0").mkdir(parents=True)
  (tmp_path / "seed_3" / "gen_0" / "result.json").write_text("{}")
  steps = 100 // 32 * 2
  assert pipeline.chain_plan(config, 100, epath.Path(tmp_path)) == [
      ((3, "gen_0"), 0), ((3, "gen_1"), steps), ((4, "gen_0"), steps),
      ((4, "gen_1"), steps)]
  # One teacher for both seeds, and a Baseline in each: seed 4 trains no
  # teacher of its own.
  config.seed_scope = "students"
  config.student_baseline = True
  assert pipeline.chain_plan(config, 100, epath.Path(tmp_path)) == [
      ((3, "gen_0"), 0), ((3, "baseline"), steps), ((3, "gen_1"), steps),
      ((4, "baseline"), steps), ((4, "gen_1"), steps)]


def test_train_seconds_sum_each_generations_epochs():
  per_seed = [{"seed": 0, "generations": [
      {"generation": 0, "history": [{"seconds": 1.5}, {"seconds": 2.0}]},
      {"generation": 1, "history": [{"seconds": 4.0}]}]}]
  assert pipeline.train_seconds(per_seed) == {
      "generations": {"seed_0/gen_0": 3.5, "seed_0/gen_1": 4.0},
      "total": 7.5}


@pytest.mark.parametrize("seconds, text", [
    (59.9, "0:59"), (61, "1:01"), (3600 * 2 + 65, "2:01:05")])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


class _FakeTqdm:
  made = []

  def __init__(self, **kwargs):
    self.kwargs, self.updates, self.closed = kwargs, [], False
    _FakeTqdm.made.append(self)

  def update(self, n=1):
    self.updates.append(n)

  def close(self):
    self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch):
  import tqdm  # pylint: disable=g-import-not-at-top
  _FakeTqdm.made = []
  monkeypatch.setattr(tqdm, "tqdm", _FakeTqdm)
  monkeypatch.delenv("CI", raising=False)
  return _FakeTqdm.made


def test_a_terminal_gets_a_bar(monkeypatch, fake_tqdm):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  bar = progress.epoch_bar(21, "gen 0 epoch 1", initial=5)
  assert fake_tqdm == [bar]
  assert (bar.kwargs["total"], bar.kwargs["initial"]) == (21, 5)


@pytest.mark.parametrize("tty, ci", [(False, None), (True, "true")])
def test_a_file_or_ci_gets_no_bar(monkeypatch, fake_tqdm, tty, ci):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
  if ci:
    monkeypatch.setenv("CI", ci)
  bar = progress.epoch_bar(21, "gen 0 epoch 1")
  bar.update(3)
  bar.close()
  assert not fake_tqdm


# Calls of 2 steps, unrolled on CPU: compiling them is the cost (conftest.py).
@pytest.mark.few_steps
def test_a_run_on_a_terminal_draws_a_bar_per_epoch_updated_per_call(
    tmp_path, monkeypatch, fake_tqdm, tiny_digits_config):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  config = tiny_digits_config(num_generations=1, num_epochs=1,
                              lr_decay_epochs=())
  config.data.max_train_examples = 320
  config.steps_per_call = 2
  results = run_results.run_chain(config, tmp_path)
  # 5 steps an epoch (320 // 64), in calls of 2, 2 and 1.
  assert [(b.kwargs["total"], b.kwargs["desc"], b.updates, b.closed)
          for b in fake_tqdm] == [
              (5, "gen 0 epoch 1", [2, 2, 1], True),
              (5, "gen 1 epoch 1", [2, 2, 1], True)]
  teacher, student = (g["history"] for g in results["generations"])
  # After the teacher, the student's 5 steps at the teacher's rate.
  assert teacher[0]["chain_seconds_left"] == pytest.approx(
      teacher[0]["seconds"])
  assert student[0]["chain_seconds_left"] == 0.0
  assert results["seconds"]["total"] == pytest.approx(
      teacher[0]["seconds"] + student[0]["seconds"])
