"""Tests of the model registry: shapes, train/inference modes, sizes, dtypes.

Parameter and MAC counts come from shapes (`jax.eval_shape`, jaxprs), so the
paper-sized networks are checked without allocating them.
"""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ban_jax import models
from ban_jax.models import cost
from ban_jax.models import densenet

# Each program runs once or twice: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

# One tiny member of every registered family, with the kwargs that shrink it.
TINY = {
    "wrn": ("wrn10_1", {}),
    "densenet": ("densenet16_4", {}),
    "resnet": ("resnet8", {}),
    "resnet18": ("resnet18", {"widths": (8, 8, 16, 16), "stem_features": 8}),
    "preresnet": ("preresnet8", {}),
    "preresnet_bottleneck": ("preresnet11", {"bottleneck": True}),
    "densewrn": ("densewrn1_0.25", {"dense_depth": 16, "dense_growth": 4}),
    "densepreresnet": ("densepreresnet1_0.5",
                       {"dense_depth": 16, "dense_growth": 4}),
}
SMALL = (8, 8, 1)
CIFAR = (32, 32, 3)


def _key(seed):
  # Threefry's compile time on CPU dominated this file's run time; the tests
  # depend on no particular random stream.
  return jax.random.key(seed, impl="rbg")


def _images(shape, batch=4, seed=0):
  return jax.random.normal(_key(seed), (batch, *shape), jnp.float32)


def _fill(abstract_variables, seed=0):
  """Variables of the given shapes without running the model's initialiser.

  Compiling the initialisers' random draws, one program per shape, took most
  of this file's run time. Kernels get N(0, 2/fan_in) from numpy, norms their
  initial scale 1, bias 0, mean 0 and variance 1 (as `init` gives them);
  `test_initialisation` runs the real initialiser.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1])
    return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape),
                       leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables)


@functools.lru_cache(maxsize=None)
def _tiny(family, shape):
  """A tiny model with dropout 0.5 and its variables for `shape` images."""
  name, kwargs = TINY[family]
  module = models.get_model(name, num_classes=5, dropout_rate=0.5,
                            dtype="float32", **kwargs)
  x = jax.ShapeDtypeStruct((4, *shape), jnp.float32)
  return module, _fill(jax.eval_shape(module.init, _key(1), x))


def test_initialisation():
  module = models.get_model("resnet8", num_classes=5)
  variables = jax.jit(module.init)(_key(1), _images(SMALL))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  # He-normal over fan-out: std sqrt(2 / (3 * 3 * 64)) for a 64->64 conv.
  kernel = variables["params"]["stage2_block0"]["Conv_1"]["kernel"]
  assert kernel.shape == (3, 3, 64, 64)
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (9 * 64)),
                             rtol=0.05)
  # Fan-out, not fan-in: a 16->32 conv has std sqrt(2 / (3 * 3 * 32)).
  kernel = variables["params"]["stage1_block0"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 16, 32)
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (9 * 32)),
                             rtol=0.05)
  for norm in jax.tree_util.tree_leaves(variables["batch_stats"]):
    assert np.all((norm == 0) | (norm == 1))


def test_batch_norm_is_torchs_momentum_and_epsilon():
  # torch's BatchNorm2d(momentum=0.1, eps=1e-5): running = 0.9 old + 0.1 batch.
  norm = models.common.batch_norm(True, jnp.float32)
  x = _images((2, 2, 3), batch=8) * 3.0 + 1.0
  variables = norm.init(_key(0), x)
  y, state = norm.apply(variables, x, mutable=["batch_stats"])
  mean, var = np.mean(x, axis=(0, 1, 2)), np.var(x, axis=(0, 1, 2))
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean,
                             rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * var,
                             rtol=1e-5)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4,
                             atol=1e-5)


# Compiled whole: one program a network compiles faster than the few
# hundred small ones that running it op by op compiles (a DenseNet-16's
# forward pass: 1.7 s instead of 4.7 s).
@functools.partial(jax.jit, static_argnums=0)
def _train(module, variables, x, seed=0):
  return module.apply(variables, x, train=True, mutable=["batch_stats"],
                      rngs={"dropout": _key(seed)})


@functools.partial(jax.jit, static_argnums=0)
def _infer(module, variables, x):
  return module.apply(variables, x, train=False)


def test_every_family_has_a_tiny_case():
  # A new family must come with a tiny case, or the tests below miss it.
  tiny_names = [name for name, _ in TINY.values()]
  for family in models.families():
    assert any(re.fullmatch(family.pattern, n) for n in tiny_names), (
        family.description)


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("shape", [SMALL, CIFAR])
def test_logits_shape_and_dtype(family, shape):
  module, variables = _tiny(family, shape)
  x = _images(shape)
  logits = _infer(module, variables, x)
  chex.assert_shape(logits, (4, 5))
  assert logits.dtype == jnp.float32
  chex.assert_tree_all_finite(logits)
  logits, _ = _train(module, variables, x)
  chex.assert_shape(logits, (4, 5))
  assert logits.dtype == jnp.float32
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("family", sorted(TINY))
def test_batch_norm_in_train_and_inference_mode(family):
  module, variables = _tiny(family, SMALL)
  # No dropout, so that the only coupling between samples is batch norm.
  module = module.clone(dropout_rate=0.0)
  x = _images(SMALL)
  other = _images(SMALL, seed=1).at[0].set(x[0])
  logits, updates = _train(module, variables, x)
  logits_other, _ = _train(module, variables, other)
  # Sample 0 is the same image in both batches; its train-mode logits are
  # not, because batch norm normalises with the batch's statistics.
  assert np.max(np.abs(logits[0] - logits_other[0])) > 1e-3
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(np.max(np.abs(a - b)) > 0 for a, b in zip(after, before))
  # Inference mode uses the running statistics: deterministic, and sample
  # 0's logits do not depend on the rest of the batch.
  inference = _infer(module, variables, x)
  np.testing.assert_array_equal(inference,
                                _infer(module, variables, x))
  np.testing.assert_allclose(
      inference[0], _infer(module, variables, other)[0],
      rtol=1e-5, atol=1e-5)


def test_inference_logits_of_a_sample_alone_equal_those_in_a_batch():
  module, variables = _tiny("wrn", SMALL)
  x = _images(SMALL)
  np.testing.assert_allclose(_infer(module, variables, x[:1])[0],
                             _infer(module, variables, x)[0],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TINY))
def test_dropout_in_train_and_inference_mode(family):
  module, variables = _tiny(family, SMALL)
  x = _images(SMALL)
  np.testing.assert_array_equal(_train(module, variables, x, seed=0)[0],
                                _train(module, variables, x, seed=0)[0])
  assert np.max(np.abs(_train(module, variables, x, seed=0)[0]
                       - _train(module, variables, x, seed=1)[0])) > 1e-3
  # Inference mode needs no dropout rng and drops nothing.
  np.testing.assert_allclose(
      _infer(module, variables, x),
      _infer(module.clone(dropout_rate=0.0), variables, x), rtol=1e-6)


def _block_outputs(block, x):
  """Output and every submodule's outputs of one block in train mode."""
  abstract = jax.eval_shape(lambda: block.init(_key(1), x, True))
  variables = _fill(abstract)
  (out, state) = jax.jit(functools.partial(
      block.apply, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=True))(variables, x, rngs={"dropout": _key(2)})
  return variables["params"], out, state["intermediates"]


def test_wrn_dropout_sits_between_the_two_convs():
  block = models.wrn.WideBasicBlock(8, 1, 0.5, jnp.float32)
  x = _images((4, 4, 8))
  params, out, caught = _block_outputs(block, x)
  dropped = caught["Dropout_0"]["__call__"][0]
  kept = np.asarray(jax.nn.relu(caught["BatchNorm_1"]["__call__"][0]))
  # Of the second BN-ReLU's positive outputs, about half are dropped and
  # the rest doubled.
  positive = kept > 0
  assert 0.3 < np.mean(dropped[positive] == 0) < 0.7
  np.testing.assert_allclose(dropped[dropped != 0], 2 * kept[dropped != 0],
                             rtol=1e-6)
  # The second conv reads the dropout's output, and nothing drops after it:
  # the block adds the identity to exactly that conv's output.
  second = jax.lax.conv_general_dilated(
      dropped, params["Conv_1"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(caught["Conv_1"]["__call__"][0], second,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out - x, second, rtol=1e-5, atol=1e-5)


def test_densenet_dropout_follows_each_conv():
  layer = densenet.DenseLayer(4, 4, 0.5, False, jnp.float32)
  _, out, caught = _block_outputs(layer, (_images((4, 4, 8)),))
  after_bottleneck, after_conv = caught["Dropout_0"]["__call__"]
  chex.assert_shape(after_bottleneck, (4, 4, 4, 16))
  assert 0.3 < np.mean(after_bottleneck == 0) < 0.7
  np.testing.assert_array_equal(out, after_conv)
  assert 0.3 < np.mean(out == 0) < 0.7
  # The transition conv too (its output is what the pooling averages).
  module, variables = _tiny("densenet", SMALL)
  _, state = jax.jit(functools.partial(
      module.apply, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=True))(variables, _images(SMALL),
                                   rngs={"dropout": _key(3)})
  transition = state["intermediates"]["Dropout_0"]["__call__"][0]
  assert 0.3 < np.mean(transition == 0) < 0.7


def test_train_mode_without_dropout_needs_no_rng():
  module, variables = _tiny("densenet", SMALL)
  logits, _ = jax.jit(functools.partial(
      module.clone(dropout_rate=0.0).apply, train=True,
      mutable=["batch_stats"]))(variables, _images(SMALL))
  chex.assert_shape(logits, (4, 5))


@pytest.mark.parametrize("name,paper", [
    ("wrn28_1", 0.38e6), ("wrn28_2", 1.48e6), ("wrn28_5", 9.16e6),
    ("wrn28_10", 36e6)])
def test_wrn_parameter_counts_match_table1(name, paper):
  # Table 1 is CIFAR-10.
  assert abs(cost.count_params(name, num_classes=10) / paper - 1) < 0.03


@pytest.mark.parametrize("name,paper,formula", [
    ("densenet112_33", 6.3e6, 6.99e6), ("densenet90_60", 16.1e6, 15.2e6),
    ("densenet80_80", 22.4e6, 21.1e6), ("densenet80_120", 50.4e6, 47.3e6)])
def test_densenet_parameter_counts_match_table1(name, paper, formula):
  # Table 1 is CIFAR-10 (10 classes); PAPER.md's DenseNet-BC formula counts
  # are for 100 classes, 90 more classifier rows, which we reproduce to 1%.
  count = cost.count_params(name, num_classes=10)
  assert abs(count / paper - 1) < 0.12
  depth, growth = map(int, name.removeprefix("densenet").split("_"))
  (*_, final), _ = densenet.stage_widths(depth, growth)
  assert abs((count + 90 * (final + 1)) / formula - 1) < 0.01


@pytest.mark.parametrize("name,num_classes,expected", [
    # The exact counts of the reference PyTorch models: peer_torch.py's
    # ResNet18 and DenseNetBC (100 classes), the WRN-28-10 of Zagoruyko &
    # Komodakis's code (10 classes), He et al.'s option-A CIFAR
    # ResNets and the Pre-ResNet-164 (10 classes).
    ("resnet18", 100, 11_220_132),
    ("wrn28_10", 10, 36_479_194),
    ("densenet100_12", 100, 800_032),
    ("resnet20", 10, 269_722),
    ("resnet56", 10, 853_018),
    ("resnet110", 10, 1_727_962),
    ("preresnet164", 10, 1_703_258)])
def test_reference_parameter_counts(name, num_classes, expected):
  assert cost.count_params(name, num_classes=num_classes) == expected


@pytest.mark.parametrize("name,paper,tolerance", [
    ("wrn28_10", 5.25e9, 0.02), ("resnet18", 0.56e9, 0.02),
    ("densenet100_12", 0.30e9, 0.05), ("densenet112_33", 2.6e9, 0.05)])
def test_macs_match_the_papers(name, paper, tolerance):
  assert abs(cost.count_macs(name) / paper - 1) < tolerance


def _resnet8_macs(side, num_classes=10):
  # resnet8 by hand: stem, 3 stages of one block (two 3x3 convs), no
  # projections (option A), the classifier.
  hw = side * side
  return (hw * 16 * 27 + hw * 16 * 16 * 9 * 2
          + hw // 4 * 32 * (16 * 9 + 32 * 9)
          + hw // 16 * 64 * (32 * 9 + 64 * 9) + 64 * num_classes)


def test_macs_of_resnet8_by_hand():
  assert cost.count_macs("resnet8", num_classes=10) == _resnet8_macs(32)
  assert cost.count_macs("resnet8", num_classes=10,
                         image_shape=(16, 16, 3)) == _resnet8_macs(16)
  # Options reach the model: two 1x1 stride-2 projections, 16->32 on 16x16
  # and 32->64 on 8x8 outputs.
  assert (cost.count_macs("resnet8", 10, shortcut="projection")
          - _resnet8_macs(32)) == 16 * 16 * 32 * 16 + 8 * 8 * 64 * 32
  # The stem's kernel follows the image's channels.
  assert (cost.count_params("resnet8", 10)
          - cost.count_params("resnet8", 10, image_shape=(8, 8, 1))) == (
              3 * 3 * 2 * 16)


class _GroupedStridedConvs(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    # 8x8x4 -> 8x8x4, each output over 4 / 2 groups x 3x3 inputs.
    x = nn.Conv(4, (3, 3), feature_group_count=2, use_bias=False)(x)
    # 8x8x4 -> 4x4x6, each output over 4 x 3x3 inputs.
    return nn.Conv(6, (3, 3), strides=2, use_bias=False)(x)


class _Einsum(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    # Contracts the image's rows (8), not its last axis: out 1x8x4x6.
    w = self.param("w", nn.initializers.zeros, (8, 6))
    return jnp.einsum("bhwc,hd->bwcd", x, w)


class _ControlFlow(nn.Module):
  """A 4x4 matmul (4 MACs per row of 4) in a jit, a scan and a cond."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", nn.initializers.zeros, (4, 4))
    v = x.reshape(2, 4)  # 8 inputs: each matmul is 2 * 4 * 4 = 32 MACs.
    v = jax.jit(jnp.matmul)(v, w)  # 32
    v, _ = jax.lax.scan(lambda h, _: (h @ w, None), v, None, length=3)  # 96
    # One branch runs: the dearer one, 64, counts.
    return jax.lax.cond(v[0, 0] > 0, lambda v: v @ w, lambda v: v @ w @ w, v)


@pytest.mark.parametrize("module,shape,expected", [
    (_GroupedStridedConvs(), (8, 8, 4),
     8 * 8 * 4 * (2 * 9) + 4 * 4 * 6 * (4 * 9)),
    (_Einsum(), (8, 8, 4), 8 * 4 * 6 * 8),
    (_ControlFlow(), (2, 2, 2), 32 + 3 * 32 + 64)])
def test_macs_of_layers_by_hand(module, shape, expected):
  assert cost.module_cost(module, shape)[1] == expected


def test_memory_efficient_densenet_has_the_same_macs():
  # Its layers are under a remat, whose body holds the convolutions.
  assert cost.count_macs("densenet16_4", 10, memory_efficient=True) == (
      cost.count_macs("densenet16_4", 10))


@pytest.mark.parametrize("family", sorted(TINY))
def test_bfloat16_compute_with_float32_state(family):
  name, kwargs = TINY[family]
  module = models.get_model(name, num_classes=5, dtype="bfloat16", **kwargs)
  x = jax.ShapeDtypeStruct((4, *SMALL), jnp.float32)
  # Shapes and dtypes only: nothing is compiled or run.
  variables = jax.eval_shape(module.init, _key(0), x)
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits, state = jax.eval_shape(
      lambda v, x: module.apply(v, x, train=True,
                                mutable=["batch_stats", "intermediates"],
                                rngs={"dropout": _key(0)}), variables, x)
  assert logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(
      state["batch_stats"])} == {jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(
      state["intermediates"])} == {jnp.dtype(jnp.bfloat16)}
  # Every conv computes in bfloat16; the classifier, the only dot_general,
  # in float32 (operands and result).
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x))(variables, x)
  eqns = list(_all_eqns(jaxpr.jaxpr))
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  assert convs and len(dots) == 1
  assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
  assert [v.aval.dtype for v in dots[0].invars + dots[0].outvars] == [
      jnp.float32] * 3


def _classifier_inputs(module, variables, x):
  """(logits, the classifier's input), recorded by a method interceptor."""

  def run(variables, x):
    seen = []

    def record(next_fun, args, kwargs, context):
      if context.module.name == "classifier" and context.method_name == (
          "__call__"):
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      logits = module.apply(variables, x)
    assert len(seen) == 1
    return logits, seen[0]

  return jax.jit(run)(variables, x)


@pytest.mark.parametrize("name", ["wrn10_1", "resnet20"])
def test_bfloat16_model_has_a_float32_classifier(name):
  x = _images(SMALL, batch=8)
  module = models.get_model(name, num_classes=5, dtype="bfloat16")
  variables = _fill(jax.eval_shape(module.init, _key(0), x), seed=3)
  variables["params"]["classifier"]["bias"] = jnp.linspace(
      -1.0, 1.0, 5, dtype=jnp.float32)
  logits, pooled = _classifier_inputs(module, variables, x)
  chex.assert_type(pooled, jnp.float32)
  chex.assert_type(logits, jnp.float32)
  kernel = variables["params"]["classifier"]["kernel"]
  bias = variables["params"]["classifier"]["bias"]
  reference = np.asarray(pooled, np.float64) @ np.asarray(
      kernel, np.float64) + np.asarray(bias, np.float64)
  np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
  # The pooled features are the mean of the last features, in float32.
  _, sown = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"])
                    )(variables, x)
  if name.startswith("resnet"):  # Post-activation: stage output = features.
    features = np.asarray(sown["intermediates"]["stage2_out"][0], np.float64)
    np.testing.assert_allclose(pooled, features.mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
  # The bfloat16 classifier, kept for comparison, rounds what the float32
  # one does not.
  low, low_pooled = _classifier_inputs(
      module.clone(float32_classifier=False), variables, x)
  chex.assert_type(low_pooled, jnp.bfloat16)
  chex.assert_type(low, jnp.float32)
  assert np.max(np.abs(np.asarray(low) - reference)) > 1e-4


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in cost._subjaxprs(eqn.params):  # pylint: disable=protected-access
      yield from _all_eqns(sub)


def test_auto_dtype_is_float32_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("'auto' means bfloat16 on accelerators.")
  module = models.get_model("wrn10_1", num_classes=3)
  x = jax.ShapeDtypeStruct((4, *SMALL), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: module.apply(v, x, mutable=["intermediates"]),
      jax.eval_shape(module.init, _key(0), x), x)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state)} == {
      jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("family", sorted(TINY))
def test_stem_classifier_and_stages_follow_the_conventions(family):
  name, kwargs = TINY[family]
  module = models.get_model(name, num_classes=5, **kwargs)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = cost.abstract_variables(module)
  assert variables["params"]["stem"]["kernel"].shape[:3] == (3, 3, 3)
  assert variables["params"]["classifier"]["kernel"].shape[-1] == 5
  _, state = jax.eval_shape(
      lambda v, x: module.apply(v, x, mutable=["intermediates"]), variables, x)
  sown = set(state["intermediates"])
  assert {f"stage{k}_{io}" for k in range(3) for io in ("in", "out")} <= sown


@functools.lru_cache(maxsize=None)
def _abstract_cifar100(name):
  """Parameter shapes and stage output shapes of `name` for one image."""
  module = models.get_model(name, 100)
  variables = cost.abstract_variables(module)
  _, state = jax.eval_shape(
      lambda v, x: module.apply(v, x, mutable=["intermediates"]), variables,
      jax.ShapeDtypeStruct((1, *CIFAR), jnp.float32))
  stages = {k: v[0].shape for k, v in state["intermediates"].items()
            if k.endswith("_out")}
  return variables["params"], stages


@pytest.mark.parametrize("name", ["densewrn1_1", "densewrn4_0.5",
                                  "densepreresnet14_0.5",
                                  "densepreresnet14_1"])
def test_table5_students_are_shaped_like_the_teacher(name):
  teacher_params, teacher_stages = _abstract_cifar100("densenet90_60")
  assert teacher_stages == {"stage0_out": (1, 32, 32, 960),
                            "stage1_out": (1, 16, 16, 1320),
                            "stage2_out": (1, 8, 8, 1500)}
  params, stages = _abstract_cifar100(name)
  # Same shapes, so the teacher's stem and classifier can be copied in.
  for layer in ("stem", "classifier"):
    chex.assert_trees_all_equal_shapes(params[layer], teacher_params[layer])
  # `ratio` times the widths a DenseNet-90-60 block hands on after its 0.5
  # compression: 480, 660 and (for the last block) 750.
  ratio = float(name.split("_")[1])
  assert stages == {k: (*v[:3], round(ratio * v[3] // 2))
                    for k, v in teacher_stages.items()}


@pytest.mark.parametrize("name,paper", [
    ("densewrn1_1", 20.9e6), ("densewrn2_1", 43.1e6), ("densewrn4_1", 87.3e6)])
def test_table5_wide_resnet_students_have_the_papers_sizes(name, paper):
  # The published Table 5 gives each student's size (CIFAR-100); these three
  # pin down the width reading above to 1%. (Wide-ResNet-4-0.5 comes out at
  # 22.4M for the paper's 24.3M; the Pre-ResNet rows, 5.5M and 20.4M for
  # 7.3M and 17.7M, fit no single width rule: see ban_jax/models/resnet.py.)
  assert abs(cost.count_params(name, num_classes=100) / paper - 1) < 0.01


def test_densenet_layers_per_block_and_widths():
  # The paper's 90 and 80 are not 6n+4: rounded down like densenet.pytorch.
  assert densenet.layers_per_block(100) == 16
  assert densenet.layers_per_block(90) == 14
  assert densenet.layers_per_block(80) == 12
  assert densenet.stage_widths(100, 12) == ((216, 300, 342), 24)
  with pytest.raises(ValueError, match="at least 10"):
    densenet.layers_per_block(9)


def test_densenet_options_change_the_architecture():
  base = cost.count_params("densenet16_4", 10)
  assert cost.count_params("densenet16_4", 10, compression=1.0) > base
  assert cost.count_params("densenet16_4", 10, bottleneck_width=2) < base


def test_memory_efficient_dense_layer_is_the_same_function():
  layers = [densenet.DenseLayer(4, 4, 0.0, efficient, jnp.float32)
            for efficient in (False, True)]
  features = tuple(_images((4, 4, c), seed=c) for c in (8, 4, 4))
  abstract = [jax.eval_shape(lambda f, l=l: l.init(_key(0), f, train=False),
                             features) for l in layers]
  chex.assert_trees_all_equal_structs(*abstract)
  variables = _fill(abstract[0])

  def loss(params, features, layer):
    out, state = layer.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        features, True, mutable=["batch_stats"])
    return jnp.sum(out ** 2), state

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                    static_argnums=2)
  (l1, s1), g1 = grad_fn(variables["params"], features, layers[0])
  (l2, s2), g2 = grad_fn(variables["params"], features, layers[1])
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(s1, s2, rtol=1e-5, atol=1e-7)
  # The efficient layer does rematerialise: its gradient holds a checkpoint
  # and re-runs the concatenation that the plain layer runs once.
  def primitives(layer):
    jaxpr = jax.make_jaxpr(grad_fn, static_argnums=2)(
        variables["params"], features, layer)
    return [e.primitive.name for e in _all_eqns(jaxpr.jaxpr)]

  plain, efficient = map(primitives, layers)
  assert any(p in ("checkpoint", "remat", "remat2") for p in efficient)
  assert efficient.count("concatenate") > plain.count("concatenate")


def test_memory_efficient_densenet_has_the_same_variables_and_outputs():
  plain, variables = _tiny("densenet", SMALL)
  efficient = plain.clone(memory_efficient=True, dropout_rate=0.0)
  chex.assert_trees_all_equal_structs(
      variables, jax.eval_shape(efficient.init, _key(1), _images(SMALL)))
  x = _images(SMALL)
  chex.assert_trees_all_close(
      _train(plain.clone(dropout_rate=0.0), variables, x),
      _train(efficient, variables, x), rtol=1e-5, atol=1e-6)


def test_resnet_shortcut_options():
  pad = cost.count_params("resnet20", 10)
  projection = cost.count_params("resnet20", 10, shortcut="projection")
  # Two projections (16->32, 32->64), each a 1x1 conv and a BN.
  assert projection - pad == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
  with pytest.raises(ValueError, match="shortcut"):
    cost.count_params("resnet8", 10, shortcut="bogus")


@pytest.mark.parametrize("name,message", [
    ("resnet21", "6n\\+2"), ("preresnet21", "6n\\+2"),
    ("preresnet165", "9n\\+2"), ("densenet9_12", "at least 10"),
    ("densewrn0_1", "at least one block"),
    ("densepreresnet1_0", "positive"), ("wrn11_2", "6n\\+4")])
def test_bad_sizes_fail_when_the_model_is_built(name, message):
  # Config validation builds the model without initialising it.
  with pytest.raises(ValueError, match=message):
    models.get_model(name, 10)


def test_main_prints_parameters_and_macs(capsys):
  # pylint: disable-next=import-outside-toplevel
  from ban_jax.models import __main__ as models_main
  models_main.main(["resnet20", "--num_classes=10"])
  out = capsys.readouterr().out
  assert "10 classes" in out
  assert re.search(r"^resnet20\s+0\.27M\s+0\.041G$", out, re.MULTILINE), out


def test_main_image_size_and_defaults(capsys, monkeypatch):
  # pylint: disable-next=import-outside-toplevel
  from ban_jax.models import __main__ as models_main
  models_main.main(["resnet8", "--num_classes=10", "--image_size=16"])
  # 75,290 parameters and 3,060,352 MACs on 16x16 images (12.2M on 32x32).
  assert capsys.readouterr().out.splitlines() == [
      "model                        params     MACs/image   (10 classes, "
      "16x16x3)",
      "resnet8                       0.08M         0.003G"]
  assert _resnet8_macs(16) == 3_060_352
  # No names: every registered example, 100 classes, 32x32 images.
  monkeypatch.setattr(models, "registered_names", lambda: ("resnet8",
                                                           "wrn10_1"))
  models_main.main([])
  out = capsys.readouterr().out.splitlines()
  assert out[0].endswith("(100 classes, 32x32x3)")
  assert out[1:] == ["resnet8                       0.08M         0.012G",
                     "wrn10_1                       0.08M         0.013G"]


def test_main_refuses_an_unknown_name_before_printing(capsys):
  # pylint: disable-next=import-outside-toplevel
  from ban_jax.models import __main__ as models_main
  with pytest.raises(SystemExit) as stop:
    models_main.main(["resnet20", "densenet_bc100"])
  assert stop.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ""  # Not even the header.
  assert "error: Unknown model 'densenet_bc100'" in captured.err
  assert "wrn28_10" in captured.err


def test_unknown_name_lists_the_valid_names():
  with pytest.raises(ValueError) as error:
    models.get_model("densenet_bc100", 10)
  message = str(error.value)
  assert "'densenet_bc100'" in message
  for name in models.registered_names():
    assert name in message
    models.get_model(name, 10)  # Every example is a valid name.
  assert len(models.registered_names()) >= 20
  # The whole name must match, not a prefix or a part of it.
  for name in ("wrn28_10x", "resnet20_", "xresnet20"):
    with pytest.raises(ValueError, match=f"Unknown model '{name}'"):
      models.get_model(name, 10)
