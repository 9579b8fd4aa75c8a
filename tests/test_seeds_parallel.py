"""Seeds side by side (config.parallel_seeds): the numbers of seeds alone.

Tolerance. A seed side by side runs the step it runs alone, under
`jax.vmap`: XLA turns the stacked convolutions into grouped ones and, with
fewer data shards, sums other partial batches, so float32 sums are taken in
another order. One step's weights then differ by a few ulp (< 1e-6, checked
below on the first steps). Training carries such differences on and, on
these tiny digits networks, amplifies them fast (measured: 1e-7 after two
steps, 2e-5 after three, 3e-3 after five for one seed; a batch-norm or
ReLU near its kink), so after the 10 steps a network trains here the
end-to-end metrics are compared loosely: losses to 1e-2 relative and test
accuracies to 2 points (9 of 450 predictions), where seeds alone differ
from one another by far more. A KL divergence between teacher and student
is also allowed 1e-3 nats: it is a difference of two near-equal
cross-entropies, so near 0 its relative error is many times theirs
(measured: 0.02148 vs 0.02120, 1.3 %). Side by side is the same
computation, not the same bits. Students of a teacher (cross-architecture,
DKPP, CWTM, feature terms, a shared teacher and stem) are compared after
one step, to 1e-5 relative as well: their losses reach 1e5 with random
teachers.
"""

import functools
import json
import shutil

import jax
import numpy as np
import pytest

from ban_jax import errors
from ban_jax import pipeline
from ban_jax import train
from ban_jax.runtime import checkpoints
from ban_jax.runtime import parallel
from ban_jax.runtime import preemption
from tests import run_results

SEEDS = (0, 1, 2, 3)
# Side by side vs alone, after training (module docstring): losses (relative)
# and test accuracies (points).
RTOL = 1e-2
KL_ATOL = 1e-3
ACCURACY_POINTS = 2.0
# A step's weights and metrics side by side vs alone: absolute, and for
# the metrics (a loss may be 1e5) and the weights of a teacher's students
# relative as well.
STEP_ATOL = 1e-6
STEP_RTOL = 1e-5


def _config(tiny_digits_config, parallel_seeds, seeds=SEEDS):
  # 5 steps an epoch (320 of the digits at batch 64), two epochs: cheap.
  config = tiny_digits_config(num_generations=1)
  config.data.max_train_examples = 320
  config.seeds = seeds
  config.parallel_seeds = parallel_seeds
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_digits_config):
  """Four seeds alone on two devices, and side by side on eight ((4, 1, 2):
  each seed's batch split over two devices, as alone). Three seeds on a
  (1, 1, 8) mesh are compared step by step
  (`test_seeds_take_the_steps_of_seeds_alone`), and on one device run end
  to end by the NaN test: a third run of the chains would cost more than
  they add."""
  out = {}
  for parallel_seeds, num_devices in ((1, 2), (4, 8)):
    workdir = tmp_path_factory.mktemp(f"together_{parallel_seeds}")
    config = _config(tiny_digits_config, parallel_seeds)
    out[parallel_seeds] = (workdir, pipeline.run(
        config, str(workdir), devices=jax.devices()[:num_devices]))
  return out


def _alone(config):
  """(the digits on the devices, generation 0's trainer of a seed alone)."""
  mesh = parallel.make_mesh()
  data = train.put_dataset(pipeline.load_dataset(config.data), mesh,
                           config.eval_batch_size)
  return data, pipeline._trainer({}, config, config.model.name, None, False,
                                 data, mesh)


def _metrics(results):
  """Per seed, per network: the test metrics and the epochs' train loss."""
  return [[(g["test_metrics"], [r["train_loss"] for r in g["history"]])
           for g in chain["generations"]] for chain in results["per_seed"]]


def _assert_close(got, expected):
  for seed_got, seed_expected in zip(got, expected, strict=True):
    for (metrics, losses), (want, want_losses) in zip(
        seed_got, seed_expected, strict=True):
      assert metrics.keys() == want.keys()
      for key in metrics:
        if key.endswith(("accuracy", "agreement")):
          assert metrics[key] == pytest.approx(want[key],
                                               abs=ACCURACY_POINTS), key
        elif key.endswith("_kl"):
          assert metrics[key] == pytest.approx(want[key], rel=RTOL,
                                               abs=KL_ATOL), key
        else:
          assert metrics[key] == pytest.approx(want[key], rel=RTOL), key
      assert losses == pytest.approx(want_losses, rel=RTOL)


def test_seeds_side_by_side_compute_what_they_compute_alone(runs):
  _, alone = runs[1]
  _, together = runs[4]
  _assert_close(_metrics(together), _metrics(alone))
  # Different seeds: different networks (no seed trained another's).
  losses = [chain["generations"][0]["test_metrics"]["test_loss"]
            for chain in together["per_seed"]]
  assert len(set(losses)) == len(SEEDS)


def test_each_seed_keeps_its_folders_and_results(runs):
  workdir, together = runs[4]
  _, alone = runs[1]
  assert together.keys() == alone.keys()
  assert together["seeds"] == list(SEEDS)
  for seed in SEEDS:
    for gen in ("gen_0", "gen_1"):
      folder = workdir / f"seed_{seed}" / gen
      result = json.loads((folder / "result.json").read_text())
      assert [r["step"] for r in result["history"]] == [5, 10]
      assert (workdir / "tensorboard" / f"seed_{seed}" / gen).is_dir()
  # The run's seconds add up: each seed counts its share of the program.
  seconds = together["seconds"]
  assert seconds["total"] == pytest.approx(sum(
      seconds["generations"].values()))


def test_a_seeds_checkpoint_loads_alone(runs, tiny_digits_config):
  """Seed 2's final state, restored as a run of seed 2 alone restores it,
  is the network whose test metrics its result.json reports."""
  workdir, together = runs[4]
  data, trainer = _alone(_config(tiny_digits_config, 1))
  ckpt = checkpoints.GenerationCheckpoints(
      workdir / "seed_2" / "gen_0" / "checkpoints")
  step, state, progress = ckpt.restore_latest(trainer.abstract_state())
  ckpt.close()
  assert step == trainer.total_steps == 10
  logits = train.test_logits(trainer, trainer.student, state.variables, data)
  expected = together["per_seed"][2]["generations"][0]
  assert train.evaluate(data, logits, None) == expected["test_metrics"]
  assert progress["history"] == expected["history"]


def test_the_stacked_state_is_sharded_on_the_seed_axis(tiny_digits_config):
  _, alone = _alone(_config(tiny_digits_config, 4))
  seed_mesh = parallel.make_seed_mesh(4, alone.mesh.devices.flat)
  assert dict(seed_mesh.shape) == {"seed": 4, "process": 1, "device": 2}
  group = train.SeedGroupTrainer(alone, seed_mesh)
  states = [alone.init_state(jax.random.key(seed)) for seed in SEEDS]
  stacked = group.stack(states)
  for leaf in jax.tree.leaves(stacked):
    assert leaf.shape[0] == 4
    assert leaf.sharding.spec == jax.sharding.PartitionSpec("seed")
    # Each device holds one seed's copy, the same on both data shards.
    for shard in leaf.addressable_shards:
      seed = shard.index[0].start
      assert shard.data.shape[0] == 1
      assert shard.device in seed_mesh.devices[seed].reshape(-1)
  # And each seed comes back as it went in, placed as alone.
  one_copy = parallel.replicated(alone.mesh)
  for i, state in enumerate(states):
    got = group.unstack(stacked, i)
    for leaf in jax.tree.leaves(got):
      assert leaf.sharding.is_equivalent_to(one_copy, leaf.ndim)
    jax.tree.map(np.testing.assert_array_equal, parallel.fetch(got),
                 parallel.fetch(state))


def _first_steps(group, alone, data, seeds, teachers=None, shared=False,
                 num_steps=2):
  """The first `num_steps` steps of `seeds` side by side and alone: the
  stacked state after them, and each seed's state and last loss alone.

  `teachers`: None, or one teacher's variables (`shared`, seed_scope
  "students") or a list of one a seed."""
  init_rngs, rngs = zip(*[jax.random.split(jax.random.key(s)) for s in seeds])
  perm_rngs, step_rngs = zip(*[jax.random.split(r) for r in rngs])
  states = [alone.init_state(r) for r in init_rngs]
  stacked = group.stack(states)
  seed_data = group.put_data(data)
  perms = group.epoch_order(group.stack(list(perm_rngs)), 0, data.num_train)
  stacked_teachers = group.prepare_teacher(teachers)
  for _ in range(num_steps):
    stacked, sums = group.train_steps(1)(
        stacked, stacked_teachers, seed_data.train_images,
        seed_data.train_labels, perms, group.stack(list(step_rngs)))
  out = []
  for i, state in enumerate(states):
    perm = alone.epoch_order(perm_rngs[i], 0, data.num_train)
    np.testing.assert_array_equal(parallel.fetch(perms)[i],
                                  parallel.fetch(perm))
    teacher = alone.prepare_teacher(
        None if teachers is None else teachers if shared else teachers[i])
    for _ in range(num_steps):
      state, metrics = alone.train_steps(1)(
          state, teacher, data.train_images, data.train_labels, perm,
          step_rngs[i])
    out.append((state, metrics))
  return stacked, sums, out, (seed_data, perms, stacked_teachers,
                              group.stack(list(step_rngs)))


def _assert_same_steps(group, stacked, sums, alone_steps, rtol=0.0):
  for i, (state, metrics) in enumerate(alone_steps):
    for name in metrics:
      assert float(sums[name][i]) == pytest.approx(
          float(metrics[name]), rel=STEP_RTOL, abs=STEP_ATOL), name
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=rtol,
                          atol=STEP_ATOL),
        parallel.fetch(group.unstack(stacked, i)), parallel.fetch(state))


# Tests of a step or two compile without most of XLA's optimisations
# (conftest.py). The chains (ten steps a network, two networks a seed,
# evaluated each epoch) run optimised code: unoptimised, the module took
# half as much CPU time again, the slower steps and evaluations costing
# more than the faster compiles saved.
@pytest.mark.few_steps
@pytest.mark.parametrize("seeds, mesh_shape", [
    (SEEDS[:3], (1, 1, 8)),  # Every seed on every device.
    (SEEDS, (4, 1, 2)),  # A seed on two devices, its two data shards.
])
def test_seeds_take_the_steps_of_seeds_alone(
    tiny_digits_config, monkeypatch, seeds, mesh_shape):
  """The first steps of seeds side by side, seed by seed, against the same
  seeds' steps alone on all 8 devices: equal to float rounding."""
  data, alone = _alone(_config(tiny_digits_config, len(seeds), seeds))
  seed_mesh = parallel.make_seed_mesh(len(seeds), alone.mesh.devices.flat)
  assert seed_mesh.devices.shape == mesh_shape
  group = train.SeedGroupTrainer(alone, seed_mesh)
  stacked, sums, alone_steps, inputs = _first_steps(group, alone, data, seeds)
  _assert_same_steps(group, stacked, sums, alone_steps)

  # A device of 1 MiB: the check before training refuses the seeds.
  monkeypatch.setattr(parallel, "device_memory_limit", lambda mesh: 2**20)
  seed_data, perms, _, step_rngs = inputs
  with pytest.raises(errors.ConfigError,
                     match=rf"^{len(seeds)} seeds side by side need about "
                     r".* GiB on each "
                     r"device, more than its 0.0 GiB: train the seeds one at "
                     r"a time \(config.parallel_seeds=1\)\.$"):
    group.check_fits(stacked, None, seed_data, perms, step_rngs, 1)


def _distill_config(tiny_digits_config, **fields):
  config = _config(tiny_digits_config, 2, seeds=(0, 1))
  config.update_from_flattened_dict(fields)
  return config


@pytest.mark.few_steps
@pytest.mark.parametrize("fields, shared", [
    # A DenseNet teaching a Wide-ResNet, one teacher a seed: DKPP with
    # attention transfer between their stages.
    ({"model.name": "densenet10_4", "student_model": "wrn10_1",
      "distill.loss": "dkpp", "distill.attention_weight": 1.0}, False),
    # One teacher for both seeds (seed_scope "students") whose stem and
    # classifier the students share, frozen: CWTM with FSP (a small weight:
    # random teachers' FSP matrices are far from the students').
    ({"seed_scope": "students", "share_stem_classifier": True,
      "distill.loss": "cwtm", "distill.fsp_weight": 1e-4}, True),
], ids=["cross_architecture_dkpp_attention", "shared_teacher_stem_cwtm_fsp"])
def test_students_side_by_side_take_their_steps_alone(
    tiny_digits_config, fields, shared):
  """Students of a teacher (the student step of generations 1..G): every
  teacher, loss and feature term side by side does what it does alone."""
  config = _distill_config(tiny_digits_config, **fields)
  pipeline.validation.validate(config)
  mesh = parallel.make_mesh()
  data = train.put_dataset(pipeline.load_dataset(config.data), mesh,
                           config.eval_batch_size)
  trainers = {}
  teacher_trainer = pipeline._trainer(trainers, config, config.model.name,
                                      None, False, data, mesh)
  teachers = [teacher_trainer.init_state(jax.random.key(10 + seed)).variables
              for seed in (0, 1)]
  alone = pipeline._trainer(
      trainers, config, pipeline.model_name(config, 1),
      teacher_trainer.student, config.share_stem_classifier, data, mesh)
  seed_mesh = parallel.make_seed_mesh(2, mesh.devices.flat)
  group = train.SeedGroupTrainer(alone, seed_mesh, shared_teacher=shared)
  # One step: a loss of random teachers' features is large, and its
  # gradients carry a step's rounding into the next one's weights fast.
  stacked, sums, alone_steps, _ = _first_steps(
      group, alone, data, (0, 1), teachers[0] if shared else teachers,
      shared, num_steps=1)
  assert {"loss", "kd_t1_dark_knowledge_share"} <= set(sums)
  _assert_same_steps(group, stacked, sums, alone_steps, rtol=STEP_RTOL)
  # The seeds are different students, and (two teachers) taught by
  # different teachers.
  assert float(sums["loss"][0]) != float(sums["loss"][1])


def test_one_teacher_teaches_the_students_side_by_side(
    tmp_path, tiny_digits_config):
  """seed_scope="students": the first seed's teacher, trained alone, teaches
  both students in one program; they end where they end alone. The run
  side by side loads the teacher the run alone trained (copied), so that
  both students learn from the very same one."""
  config = _config(tiny_digits_config, 1, seeds=(0, 1))
  config.seed_scope = "students"
  config.num_epochs = 1
  config.optim.lr_decay_epochs = ()
  # Two devices: side by side, a seed on each.
  two = jax.devices()[:2]
  alone = pipeline.run(config, str(tmp_path / "alone"), devices=two)
  together_dir = tmp_path / "together"
  shutil.copytree(tmp_path / "alone" / "seed_0" / "gen_0",
                  together_dir / "seed_0" / "gen_0")
  shutil.copy(tmp_path / "alone" / "config.json", together_dir)
  config.parallel_seeds = 2
  together = pipeline.run(config, str(together_dir), devices=two)
  _assert_close(_metrics(together), _metrics(alone))
  for results in (alone, together):
    teachers = [chain["generations"][0] for chain in results["per_seed"]]
    assert teachers[0] == teachers[1] and teachers[1]["seed"] == 0
  assert not (together_dir / "seed_1" / "gen_0").exists()


def test_fewer_devices_than_seeds_share_them():
  mesh = parallel.make_seed_mesh(16)
  assert dict(mesh.shape) == {"seed": 8, "process": 1, "device": 1}
  mesh = parallel.make_seed_mesh(3)
  assert dict(mesh.shape) == {"seed": 1, "process": 1, "device": 8}


def _on_epoch(monkeypatch, name, epoch, action):
  """Calls `action()` once the network logged as `name` (e.g. '1 seed 2')
  has logged `epoch` (and saved it)."""
  log_epoch = pipeline._log_epoch

  def log_then_act(index, num_epochs):
    log = log_epoch(index, num_epochs)

    def maybe_act(record):
      log(record)
      if (str(index), record["epoch"]) == (name, epoch):
        action()
    return maybe_act

  monkeypatch.setattr(pipeline, "_log_epoch", log_then_act)


def test_a_stop_then_a_kill_between_two_seeds_saves_resumes_exactly(
    runs, tmp_path, monkeypatch, tiny_digits_config):
  """SIGTERM in BAN-1 after its first epoch checkpoints every seed at the
  step reached; seed 2's checkpoint of it is then lost, as a kill -9
  between two seeds' saves loses it. The rerun goes back to the step all
  seeds have and ends with the uninterrupted run's numbers, exactly."""
  _, uninterrupted = runs[4]
  config = _config(tiny_digits_config, 4)
  preemption.reset()
  _on_epoch(monkeypatch, "1 seed 3", 1,
            lambda: preemption.request("SIGTERM"))
  try:
    with pytest.raises(preemption.StopRequested) as stop:
      pipeline.run(config, str(tmp_path))
  finally:
    preemption.reset()
  monkeypatch.undo()
  root = tmp_path.resolve()
  assert str(stop.value) == (
      f"Stopped by SIGTERM in generation 1 at step 6, checkpointed in "
      f"{root}/seed_{{0,1,2,3}}/gen_1/checkpoints/6. Rerun the same command "
      "to continue from there.")
  for seed in SEEDS:
    ckpt = root / f"seed_{seed}" / "gen_1" / "checkpoints"
    assert checkpoints.GenerationCheckpoints(ckpt).all_steps() == [5, 6]
  shutil.rmtree(root / "seed_2" / "gen_1" / "checkpoints" / "6")

  resumed = pipeline.run(config, str(tmp_path))
  assert _metrics(resumed) == _metrics(uninterrupted)
  assert (root / "seed_0" / "gen_1" / "checkpoints" / "6.ahead").is_dir()


@pytest.mark.few_steps
def test_a_nan_in_one_seed_names_that_seed(tmp_path, monkeypatch,
                                           tiny_digits_config):
  config = _config(tiny_digits_config, 3, seeds=(0, 1, 2))
  restore_or_init = pipeline._restore_or_init

  def seed_1_broken(trainer, what, *args, **kwargs):
    state, progress = restore_or_init(trainer, what, *args, **kwargs)
    if what.endswith("seed 1"):
      state = state.replace(params=jax.tree.map(lambda x: x * np.nan,
                                                state.params))
    return state, progress
  monkeypatch.setattr(pipeline, "_restore_or_init", seed_1_broken)
  with pytest.raises(errors.NonFiniteLossError,
                     match=r"^Non-finite training loss of seed 1 in "
                     r"generation 0 at steps 0-5\. No checkpoint"):
    # Three seeds on one device: a (1, 1, 1) mesh, the seeds' axis unsharded.
    run_results.run_chain(config, tmp_path)


def test_more_seeds_side_by_side_than_run_is_refused(tiny_digits_config):
  config = _config(tiny_digits_config, 5)
  with pytest.raises(errors.ConfigError,
                     match=r"config.parallel_seeds=5 is more than the 4 "
                     r"seeds that run .*use at most 4"):
    pipeline.validation.validate(config)
