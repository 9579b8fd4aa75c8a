"""The train step (loss selection, feature terms, frozen parameters), the
epoch (its order, batches and compiled calls) and a cross-architecture
chain."""

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ban_jax import feature_losses
from ban_jax import losses
from ban_jax import pipeline
from ban_jax import train
from ban_jax.data import Dataset
from ban_jax.data import synthetic
from ban_jax.runtime import compilation
from ban_jax.runtime import parallel
from configs import digits
from tests import run_results

# Most programs here run a step or two, and the chains train networks
# no other module compiles: compiling is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

NUM_CLASSES = 10


def _distill(**overrides):
  distill = digits.get_config().distill
  distill.update(overrides)
  return distill


@pytest.fixture(scope="module")
def setup():
  config = digits.get_config()
  config.model.name = "wrn10_1"
  student = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  teacher = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  labels = jnp.arange(16) % NUM_CLASSES
  # Jitted, here and below: op by op, every operation compiles on its own.
  student_vars = jax.jit(student.init)(jax.random.key(1), images)
  teacher_vars = jax.jit(teacher.init)(jax.random.key(2), images)
  tx = train.make_optimizer(config.optim, steps_per_epoch=10)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=student_vars["params"],
      batch_stats=student_vars["batch_stats"],
      opt_state=tx.init(student_vars["params"]))
  teacher_logits, sown = jax.jit(functools.partial(
      teacher.apply, train=False, mutable=["intermediates"]))(teacher_vars,
                                                              images)
  return dict(student=student, tx=tx, state=state, images=images,
              labels=labels, teacher_logits=teacher_logits,
              teacher_intermediates=sown["intermediates"])


def _step_loss(setup, distill, rng):
  update = jax.jit(lambda state, rng: train.student_update(
      state, setup["tx"], setup["student"], setup["images"], setup["labels"],
      setup["teacher_logits"], rng, distill,
      setup["teacher_intermediates"]))
  _, metrics = update(setup["state"], rng)
  return float(metrics["loss"])


def _student_forward(setup, rng):
  dropout_rng, _ = jax.random.split(rng)
  logits, sown = jax.jit(functools.partial(
      setup["student"].apply, train=True,
      mutable=["batch_stats", "intermediates"]))(
          {"params": setup["state"].params,
           "batch_stats": setup["state"].batch_stats}, setup["images"],
          rngs={"dropout": dropout_rng})
  return logits, sown["intermediates"]


@pytest.mark.parametrize("name", losses.DISTILL_LOSSES)
def test_config_selects_the_loss(setup, name):
  rng = jax.random.key(3)
  # DKPP from the step's key here; one permutation per example is tested
  # on the compiled step below.
  distill = _distill(loss=name, temperature=2.0, label_weight=0.3,
                     dkpp_permutation="step")
  logits, _ = _student_forward(setup, rng)
  _, loss_rng = jax.random.split(rng)
  expected = losses.distillation_loss(
      name, logits, setup["teacher_logits"], setup["labels"], loss_rng,
      temperature=2.0, label_weight=0.3)
  assert _step_loss(setup, distill, rng) == pytest.approx(float(expected),
                                                          rel=1e-5)


def test_dkpp_per_example_needs_the_example_ids(setup):
  with pytest.raises(ValueError, match="example_ids, example_rng"):
    train.student_update(
        setup["state"], setup["tx"], setup["student"], setup["images"],
        setup["labels"], setup["teacher_logits"], jax.random.key(0),
        _distill(loss="dkpp"))


@pytest.mark.parametrize("weights", [(1.5, 0.0), (0.0, 0.7)])
def test_feature_terms_are_added(setup, weights):
  rng = jax.random.key(4)
  distill = _distill(loss="kd", attention_weight=weights[0],
                     fsp_weight=weights[1])
  logits, student_sown = _student_forward(setup, rng)
  kd = losses.kd_loss(logits, setup["teacher_logits"])
  s_pairs, s_out = feature_losses.stage_features(student_sown)
  t_pairs, t_out = feature_losses.stage_features(
      setup["teacher_intermediates"])
  extra = (weights[0] * feature_losses.attention_transfer_loss(s_out, t_out)
           + weights[1] * feature_losses.fsp_loss(s_pairs, t_pairs))
  assert float(extra) > 1e-4  # The term is really there.
  assert _step_loss(setup, distill, rng) == pytest.approx(
      float(kd + extra), rel=1e-5)


def test_frozen_parameters_get_no_update(setup):
  config = digits.get_config()
  tx = train.make_optimizer(config.optim, 10,
                            frozen=pipeline._is_shared)
  state = setup["state"].replace(opt_state=tx.init(setup["state"].params))
  step = jax.jit(lambda s, r: train.student_update(
      s, tx, setup["student"], setup["images"], setup["labels"],
      setup["teacher_logits"], r, _distill()))
  new, _ = step(state, jax.random.key(0))
  new, _ = step(new, jax.random.key(1))  # Momentum too stays zero.
  for name in ("stem", "classifier"):
    jax.tree.map(np.testing.assert_array_equal, new.params[name],
                 state.params[name])
  moved = new.params["stage0_block0"]["Conv_0"]["kernel"]
  assert not np.allclose(moved, state.params["stage0_block0"]["Conv_0"][
      "kernel"])


def test_copy_stem_classifier_asserts_shapes():
  config = digits.get_config()
  shapes = lambda name: jax.eval_shape(
      lambda: pipeline.build_model(name, config, NUM_CLASSES).init(
          jax.random.key(0), jnp.zeros((1, 8, 8, 1))))["params"]
  teacher = jax.tree.map(np.zeros_like, jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), shapes("wrn10_2")))
  student = jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                         shapes("wrn10_2"))
  copied = pipeline.copy_stem_classifier(student, teacher)
  assert np.all(copied["stem"]["kernel"] == 0)
  assert np.all(copied["classifier"]["kernel"] == 0)
  assert np.all(copied["stage0_block0"]["Conv_0"]["kernel"] == 1)
  other = jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                       shapes("wrn10_1"))
  # validation tells the user (test_validation); this guards callers.
  with pytest.raises(AssertionError):
    pipeline.copy_stem_classifier(other, teacher)


def test_cross_architecture_chain(tmp_path):
  config = digits.get_config()
  config.model.name = "densenet10_4"
  config.student_model = "wrn10_1"
  config.num_generations = 1
  config.num_epochs = 2
  config.optim.lr_decay_epochs = (1,)
  results = run_results.run_chain(config, tmp_path)
  models = [(g["model"], g["loss"]) for g in results["generations"]]
  assert models == [("densenet10_4", "ce"), ("wrn10_1", "kd")]
  student = results["generations"][1]
  # Both learnt (chance is 10%), the student from the teacher.
  assert results["generations"][0]["test_accuracy"] > 50
  assert student["test_metrics"]["teacher_agreement"] > 50
  first = student["history"][0]
  assert first["train_kd_t1_dark_knowledge_share"] > 0
  # kd at T = 1 with weight 1: the loss's split is the T = 1 KD split.
  assert first["train_loss_dark_knowledge_share"] == pytest.approx(
      first["train_kd_t1_dark_knowledge_share"], rel=1e-6)
  assert "densenet10_4 -> wrn10_1" in (tmp_path / "results.md").read_text()


def test_prepare_teacher_casts_kernels_once_without_changing_outputs():
  config = digits.get_config()
  config.batch_size = 16
  config.model.dtype = "bfloat16"
  model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  mesh = parallel.make_mesh(jax.devices()[:1])
  data = train.put_dataset(
      synthetic.load(32, 8, NUM_CLASSES, num_test=16), mesh, 16)
  trainer = train.GenerationTrainer(config, model, model, data, mesh)
  variables = trainer.init_state(jax.random.key(0)).variables
  prepared = trainer.prepare_teacher(variables)

  flat = dict(jax.tree_util.tree_leaves_with_path(variables))
  kernels = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(prepared):
    original = flat[path]
    if path[-1].key == "kernel" and path[1].key != "classifier":
      kernels += 1
      assert leaf.dtype == jnp.bfloat16, path
      np.testing.assert_array_equal(leaf, original.astype(jnp.bfloat16))
    else:  # Norms, statistics and the float32 classifier keep float32.
      assert leaf.dtype == jnp.float32, path
      np.testing.assert_array_equal(leaf, original)
  # The stem and 8 block convs (stage 0 has no shortcut).
  assert kernels == 9

  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply(prepared, images),
                                apply(variables, images))
  # A bfloat16 classifier's kernel is cast like the convolutions'.
  bf16_classifier = model.clone(float32_classifier=False)
  prepared = train.GenerationTrainer(
      config, bf16_classifier, bf16_classifier, data, mesh).prepare_teacher(
          variables)
  assert prepared["params"]["classifier"]["kernel"].dtype == jnp.bfloat16
  # A float32 teacher is used as it is.
  config.model.dtype = "float32"
  f32_model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  f32_trainer = train.GenerationTrainer(config, f32_model, f32_model, data,
                                        mesh)
  assert f32_trainer.prepare_teacher(variables) is variables
  assert trainer.prepare_teacher(None) is None


def test_xla_options_parse_and_reach_the_compiled_step():
  assert compilation.xla_compiler_options("") == {}
  assert compilation.xla_compiler_options(
      " xla_gpu_enable_command_buffer=FUSION,CUDNN ; "
      "xla_gpu_graph_min_graph_size=2;") == {
          "xla_gpu_enable_command_buffer": "FUSION,CUDNN",
          "xla_gpu_graph_min_graph_size": "2"}
  with pytest.raises(ValueError, match="is not 'xla_<option>=<value>'"):
    compilation.xla_compiler_options("gpu_autotune_level=2")

  config = digits.get_config()
  config.batch_size = 16
  # A name XLA does not know: only a compile that received it can refuse it.
  config.xla_options = "xla_this_option_does_not_exist=1"
  model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  mesh = parallel.make_mesh(jax.devices()[:1])
  data = train.put_dataset(
      synthetic.load(32, 8, NUM_CLASSES, num_test=16), mesh, 16)
  trainer = train.GenerationTrainer(config, model, model, data, mesh)
  state = trainer.init_state(jax.random.key(0))
  perm = jnp.arange(32)
  with pytest.raises(Exception, match="xla_this_option_does_not_exist"):
    trainer.train_steps(1).lower(
        state, state.variables, data.train_images, data.train_labels, perm,
        jax.random.key(1)).compile()


def _optim(**overrides):
  optim = ml_collections.ConfigDict({
      "learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
      "weight_decay": 5e-4, "lr_decay_epochs": (), "lr_decay_factor": 0.2})
  optim.update(overrides)
  return optim


def test_optimizer_is_nesterov_sgd_with_coupled_decay_on_every_parameter():
  # Zero gradient: only the decay moves the weights. Coupled decay adds
  # wd * w to the gradient g; Nesterov steps by lr * (g + momentum * g)
  # after one update: 1 - 0.1 * (5e-4 + 0.9 * 5e-4) = 0.999905. Without
  # Nesterov it would be 0.99995; norms' scales decay like kernels.
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones(2)}
  tx = train.make_optimizer(_optim(), steps_per_epoch=10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  for leaf in jax.tree.leaves(optax.apply_updates(params, updates)):
    np.testing.assert_allclose(leaf, 0.999905, rtol=1e-7)


def test_learning_rate_drops_at_the_first_step_of_the_named_epoch():
  schedule = train.learning_rate_schedule(
      _optim(lr_decay_epochs=(2, 3)), steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.1, 0.1, 0.02, 0.02, 0.004])


# ------------------------------------------------------------------ epochs


def test_epoch_visits_every_example_once():
  n, batch = 96, 16
  steps = n // batch
  perm = train.epoch_permutation(jax.random.key(0), n)
  take = jax.jit(train.batch_indices, static_argnums=2)
  seen = np.concatenate([np.asarray(take(perm, s, batch))
                         for s in range(steps)])
  assert seen.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(seen, minlength=n), np.ones(n))
  # The order is shuffled, and another epoch's key gives another order.
  assert (seen != np.arange(n)).any()
  other = train.epoch_permutation(jax.random.key(1), n)
  assert (np.asarray(other) != np.asarray(perm)).any()
  np.testing.assert_array_equal(np.sort(np.asarray(other)), np.arange(n))


def test_epoch_with_remainder_has_no_repeats():
  n, batch = 100, 16
  perm = train.epoch_permutation(jax.random.key(5), n)
  seen = np.concatenate([np.asarray(train.batch_indices(perm, s, batch))
                         for s in range(n // batch)])
  assert len(seen) == 96 and len(set(seen.tolist())) == 96
  np.testing.assert_array_equal(seen, np.asarray(perm)[:96])


def test_epoch_permutation_is_int32_even_with_x64():
  with jax.enable_x64(True):
    perm = train.epoch_permutation(jax.random.key(0), 10)
  assert perm.dtype == jnp.int32
  np.testing.assert_array_equal(np.sort(np.asarray(perm)), np.arange(10))


@pytest.mark.parametrize("num_examples, batch_size, steps", [
    (16, 16, 1), (31, 16, 1), (32, 16, 2),
    (50000, 128, 390),  # CIFAR: 80 images an epoch are left out.
    (1347, 64, 21)])    # Digits.
def test_an_epoch_is_the_full_batches(num_examples, batch_size, steps):
  config = digits.get_config()
  config.batch_size = batch_size
  mesh = parallel.make_mesh(jax.devices()[:1])
  empty = np.zeros((num_examples, 1, 1, 1), np.uint8)
  data = train.put_dataset(Dataset(
      name="empty", train_images=empty,
      train_labels=np.zeros(num_examples, np.int32), test_images=empty[:1],
      test_labels=np.zeros(1, np.int32), num_classes=NUM_CLASSES,
      mean=(0.0,), std=(1.0,)), mesh, 1)
  model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  trainer = train.GenerationTrainer(config, model, None, data, mesh)
  assert trainer.steps_per_epoch == steps
  assert sum(train.epoch_calls(0, steps, steps_per_call=4)) == steps


@pytest.mark.parametrize("step, steps_per_call, every, sizes", [
    (0, 3, 0, [3, 3, 1]),  # The rest of the epoch is a shorter call.
    (4, 3, 0, [3]),  # From mid-epoch (a resumed run) to its end.
    (7, 10, 0, [7]),  # Never past the epoch's end.
    (0, 0, 0, [1] * 7),  # 0 steps per call means 1.
    (0, 3, 2, [2, 2, 2, 1]),  # Every checkpoint step ends a call.
    (7, 4, 5, [3, 4]),  # Checkpoint steps count from the run's start.
])
def test_epoch_calls_end_at_checkpoints_and_the_epochs_end(
    step, steps_per_call, every, sizes):
  assert train.epoch_calls(step, 7, steps_per_call, every) == sizes


def test_run_epoch_resumes_with_the_partial_sums_and_reports_each_call():
  calls, reported = [], []

  def train_steps(n):
    def run(state, teacher_vars, images, labels, perm, rng):
      del teacher_vars, images, labels
      calls.append((n, np.asarray(perm), rng))
      return state + n, {"loss": jnp.float32(0.5 * n)}
    return run

  trainer = types.SimpleNamespace(
      steps_per_epoch=7, train_steps=train_steps,
      epoch_order=train.GenerationTrainer.epoch_order,
      config=types.SimpleNamespace(steps_per_call=2,
                                   checkpoint_every_steps=0))
  data = types.SimpleNamespace(num_train=7 * 16 + 5, train_images=None,
                               train_labels=None)
  perm_rng, step_rng = jax.random.key(0), jax.random.key(1)
  state, sums = train.run_epoch(
      trainer, 10, None, data, perm_rng, step_rng, 10,
      sums={"loss": jnp.float32(4.0)},
      after_call=lambda *args: reported.append(args[:3]))
  # Steps 10-13 of epoch 1, on epoch 1's order, in calls of 2 and 2.
  expected_perm = np.asarray(train.epoch_permutation(
      jax.random.fold_in(perm_rng, 1), 117))
  assert [n for n, _, _ in calls] == [2, 2]
  for _, perm, rng in calls:
    np.testing.assert_array_equal(perm, expected_perm)
    assert rng is step_rng
  assert reported == [(12, 2, 12), (14, 2, 14)]
  assert state == 14 and sums == {"loss": 6.0}


def test_each_epoch_and_generation_has_its_own_order(tmp_path, monkeypatch,
                                                     tiny_digits_config):
  calls = []  # (the state's step, the permutation) per compiled call.
  train_steps = train.GenerationTrainer.train_steps

  def recording(self, num_steps):
    compiled = train_steps(self, num_steps)

    def run(state, teacher_vars, images, labels, perm, rng):
      calls.append((int(parallel.fetch(state.step)),
                    np.asarray(parallel.fetch(perm))))
      return compiled(state, teacher_vars, images, labels, perm, rng)
    return run

  monkeypatch.setattr(train.GenerationTrainer, "train_steps", recording)
  config = tiny_digits_config(num_generations=1, lr_decay_epochs=())
  config.data.max_train_examples = 320  # 5 steps an epoch.
  run_results.run_chain(config, tmp_path)
  spe = 320 // 64
  assert len(calls) == 2 * 2 * spe  # One step per call on the digits.
  orders = {}
  for index, (step, perm) in enumerate(calls):
    generation = index // (2 * spe)
    assert step == index % (2 * spe)
    orders.setdefault((generation, step // spe), []).append(perm)
  for perms in orders.values():  # One order for a whole epoch...
    for perm in perms[1:]:
      np.testing.assert_array_equal(perm, perms[0])
    np.testing.assert_array_equal(np.sort(perms[0]), np.arange(320))
  firsts = [perms[0] for perms in orders.values()]
  for i, a in enumerate(firsts):  # ...and a new one for every other.
    for b in firsts[i + 1:]:
      assert not np.array_equal(a, b)


def _augmented_wrn10_1_step(loss: str = "kd"):
  """(config, data, teacher module, trainer) of a WRN-10-1 digits step with
  augmentation, one step per call, on every device."""
  config = digits.get_config()
  config.model.name = "wrn10_1"
  config.data.augment = True
  config.distill.loss = loss
  config.steps_per_call = 1
  mesh = parallel.make_mesh()
  data = train.put_dataset(pipeline.load_dataset(config.data), mesh,
                           config.eval_batch_size)
  teacher = pipeline.build_model("wrn10_1", config, data.num_classes)
  # pylint: disable-next=protected-access
  trainer = pipeline._trainer({}, config, "wrn10_1", teacher, False, data,
                              mesh)
  return config, data, teacher, trainer


def test_a_step_uses_the_teacher_in_inference_mode_and_a_fresh_key():
  # The compiled step against the same step built by hand from its parts:
  # the teacher in inference mode (its running statistics, here far from
  # any batch's, so batch statistics would give other logits) and the
  # step's own key, fold_in(rng, step), for the crop and flip.
  config, data, teacher, trainer = _augmented_wrn10_1_step()
  teacher_vars = trainer.init_state(jax.random.key(7)).variables
  teacher_vars["batch_stats"] = jax.tree.map(
      lambda x: jnp.full_like(x, 3.0), teacher_vars["batch_stats"])
  teacher_vars = parallel.fetch(teacher_vars)
  perm = jnp.arange(data.num_train, dtype=jnp.int32)
  rng = jax.random.key(11)

  @jax.jit  # Compiled as a whole: op by op on 8 devices takes 20 s.
  def by_hand(state, step_rng):
    images, labels, rest = trainer._batch_from_device(
        state, data.train_images, data.train_labels, perm, step_rng)
    logits = teacher.apply(teacher_vars, images, train=False)
    return train.student_update(
        state, trainer.tx, trainer.student, images, labels, logits, rest,
        config.distill)[1]

  for step in (0, 5):
    state = trainer.init_state(jax.random.key(3))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    expected = parallel.fetch(by_hand(state, jax.random.fold_in(rng, step)))
    _, got = trainer.train_steps(1)(state, teacher_vars, data.train_images,
                                    data.train_labels, perm, rng)
    for name, value in parallel.fetch(got).items():
      np.testing.assert_allclose(value, expected[name], rtol=1e-5,
                                 err_msg=f"{name} at step {step}")


def test_dkpp_per_example_step_loss_is_the_targets_of_the_batch_indices():
  # The compiled step's loss against the loss built by hand from
  # dkpp_targets with the batch's indices into the train split and the
  # generation's key. At step 3 the batch holds step 0's examples in
  # reverse order (other augmented views): the same key must serve.
  config, data, teacher, trainer = _augmented_wrn10_1_step(loss="dkpp")
  assert config.distill.dkpp_permutation == "example"  # The default.
  teacher_vars = parallel.fetch(trainer.init_state(jax.random.key(7))
                                .variables)
  rng = jax.random.key(11)
  b = config.batch_size
  block = np.arange(100, 100 + b)
  # Not a permutation, which does not matter: a step reads only its slice.
  perm = np.arange(data.num_train)
  perm[:b], perm[3 * b:4 * b] = block, block[::-1]
  perm = jnp.asarray(perm, jnp.int32)

  @jax.jit
  def by_hand(state, step_rng, idx):
    images, labels, _ = trainer._batch_from_device(
        state, data.train_images, data.train_labels, perm, step_rng)
    teacher_logits = teacher.apply(teacher_vars, images, train=False)
    logits, _ = trainer.student.apply(
        state.variables, images, train=True, mutable=["batch_stats"])
    targets = losses.dkpp_targets(train.dkpp_example_rng(rng),
                                  teacher_logits, labels, example_ids=idx)
    return losses.soft_cross_entropy(logits, targets)

  for step, idx in ((0, block), (3, block[::-1])):
    state = trainer.init_state(jax.random.key(3))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    expected = float(parallel.fetch(by_hand(
        state, jax.random.fold_in(rng, step), jnp.asarray(idx, jnp.int32))))
    _, got = trainer.train_steps(1)(state, teacher_vars, data.train_images,
                                    data.train_labels, perm, rng)
    assert float(parallel.fetch(got["loss"])) == pytest.approx(
        expected, rel=1e-5), f"step {step}"
    # DKPP has no Eq. 7 split of its own; the T = 1 share is still there.
    assert set(got) == {"loss", "accuracy", "kd_t1_dark_knowledge_share"}
