"""The train step: loss selection, feature terms, frozen parameters, and a
cross-architecture chain."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ban_jax import feature_losses
from ban_jax import losses
from ban_jax import parallel
from ban_jax import pipeline
from ban_jax import train
from configs import digits

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
  student_vars = student.init(jax.random.key(1), images)
  teacher_vars = teacher.init(jax.random.key(2), images)
  tx = train.make_optimizer(config.optim, steps_per_epoch=10)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=student_vars["params"],
      batch_stats=student_vars["batch_stats"],
      opt_state=tx.init(student_vars["params"]))
  teacher_logits, sown = teacher.apply(teacher_vars, images, train=False,
                                       mutable=["intermediates"])
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
  logits, sown = setup["student"].apply(
      {"params": setup["state"].params,
       "batch_stats": setup["state"].batch_stats}, setup["images"],
      train=True, mutable=["batch_stats", "intermediates"],
      rngs={"dropout": dropout_rng})
  return logits, sown["intermediates"]


@pytest.mark.parametrize("name", losses.DISTILL_LOSSES)
def test_config_selects_the_loss(setup, name):
  rng = jax.random.key(3)
  distill = _distill(loss=name, temperature=2.0, label_weight=0.3)
  logits, _ = _student_forward(setup, rng)
  _, loss_rng = jax.random.split(rng)
  expected = losses.distillation_loss(
      name, logits, setup["teacher_logits"], setup["labels"], loss_rng,
      temperature=2.0, label_weight=0.3)
  assert _step_loss(setup, distill, rng) == pytest.approx(float(expected),
                                                          rel=1e-5)


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


def test_copy_stem_classifier_checks_shapes():
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
  with pytest.raises(ValueError, match=r"classifier has shapes .*\(64, 10\)"
                     r".* teacher's has .*\(128, 10\)"):
    pipeline.copy_stem_classifier(other, teacher)


def test_cross_architecture_chain(tmp_path):
  config = digits.get_config()
  config.model.name = "densenet10_4"
  config.student_model = "wrn10_1"
  config.num_generations = 1
  config.num_epochs = 3
  config.optim.lr_decay_epochs = (2,)
  results = pipeline.run(config, str(tmp_path))
  models = [(g["model"], g["loss"]) for g in results["generations"]]
  assert models == [("densenet10_4", "ce"), ("wrn10_1", "kd")]
  student = results["generations"][1]
  # Both learnt (chance is 10%), the student from the teacher.
  assert results["generations"][0]["test_accuracy"] > 50
  assert student["test_metrics"]["teacher_agreement"] > 50
  assert student["history"][0]["train_dark_knowledge_share"] > 0
  assert "densenet10_4 -> wrn10_1" in (tmp_path / "results.md").read_text()


def test_prepare_teacher_casts_kernels_once_without_changing_outputs():
  from ban_jax import bench  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.batch_size = 16
  config.model.dtype = "bfloat16"
  model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  mesh = parallel.make_mesh(jax.devices()[:1])
  data = train.put_dataset(
      bench.synthetic_dataset(32, 8, NUM_CLASSES, num_test=16), mesh, 16)
  trainer = train.GenerationTrainer(config, model, model, data, mesh)
  variables = trainer.init_state(jax.random.key(0)).variables
  prepared = trainer.prepare_teacher(variables)

  flat = dict(jax.tree_util.tree_leaves_with_path(variables))
  kernels = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(prepared):
    original = flat[path]
    if path[-1].key == "kernel":
      kernels += 1
      assert leaf.dtype == jnp.bfloat16, path
      np.testing.assert_array_equal(leaf, original.astype(jnp.bfloat16))
    else:  # Norm parameters and statistics keep float32.
      assert leaf.dtype == jnp.float32, path
      np.testing.assert_array_equal(leaf, original)
  # The stem, the classifier and 8 block convs (stage 0 has no shortcut).
  assert kernels == 10

  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  np.testing.assert_array_equal(model.apply(prepared, images),
                                model.apply(variables, images))
  # A float32 teacher is used as it is.
  config.model.dtype = "float32"
  f32_model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  f32_trainer = train.GenerationTrainer(config, f32_model, f32_model, data,
                                        mesh)
  assert f32_trainer.prepare_teacher(variables) is variables
  assert trainer.prepare_teacher(None) is None


def test_xla_options_parse_and_reach_the_compiled_step():
  assert train.xla_compiler_options("") == {}
  assert train.xla_compiler_options(
      " xla_gpu_enable_command_buffer=FUSION,CUDNN ; "
      "xla_gpu_graph_min_graph_size=2;") == {
          "xla_gpu_enable_command_buffer": "FUSION,CUDNN",
          "xla_gpu_graph_min_graph_size": "2"}
  with pytest.raises(ValueError, match="is not 'xla_<option>=<value>'"):
    train.xla_compiler_options("gpu_autotune_level=2")

  from ban_jax import bench  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.batch_size = 16
  # A name XLA does not know: only a compile that received it can refuse it.
  config.xla_options = "xla_this_option_does_not_exist=1"
  model = pipeline.build_model("wrn10_1", config, NUM_CLASSES)
  mesh = parallel.make_mesh(jax.devices()[:1])
  data = train.put_dataset(
      bench.synthetic_dataset(32, 8, NUM_CLASSES, num_test=16), mesh, 16)
  trainer = train.GenerationTrainer(config, model, model, data, mesh)
  state = trainer.init_state(jax.random.key(0))
  perm = jnp.arange(32)
  with pytest.raises(Exception, match="xla_this_option_does_not_exist"):
    trainer.train_steps(1).lower(
        state, state.variables, data.train_images, data.train_labels, perm,
        jax.random.key(1)).compile()
