"""DenseNet-BC against the plain formulation it replaced.

`_ReferenceDenseNet` is densenet.py as it was before dense layers were
scanned (every layer concatenating the list of its block's earlier outputs,
all layers unrolled). The model must keep its variables (names, shapes and
initial values) and compute the same function: logits in train and
inference mode, the batch-norm statistics a train step leaves behind, and
the gradients, all in float32.
"""

import functools
from typing import Any, Sequence

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ban_jax.models import common
from ban_jax.models import densenet

# Each program runs a step or two: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

# 22 = 6 * 3 + 4: three layers a block, so that layers_per_scan=2 gives a
# scanned pair and a lone unrolled layer in each block, and 3 scans all.
DEPTH, GROWTH, CLASSES = 22, 4, 5
SHAPE = (4, 8, 8, 3)


class _ReferenceConcatNormConv(nn.Module):
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool) -> jax.Array:
    x = jnp.concatenate(inputs, axis=-1) if len(inputs) > 1 else inputs[0]
    y = nn.relu(common.batch_norm(train, self.dtype, name="norm")(x))
    return common.conv(self.features, 1, self.dtype, name="conv")(y)


class _ReferenceDenseLayer(nn.Module):
  growth: int
  bottleneck_width: int
  dropout_rate: float
  memory_efficient: bool
  dtype: Any

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
    head_cls = _ReferenceConcatNormConv
    if self.memory_efficient:
      head_cls = nn.remat(_ReferenceConcatNormConv, static_argnums=(2,))
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = head_cls(self.bottleneck_width * self.growth, self.dtype,
                 name="bottleneck")(tuple(features), train)
    y = nn.relu(common.batch_norm(train, self.dtype, name="norm")(dropout(y)))
    return dropout(common.conv(self.growth, 3, self.dtype, name="conv")(y))


class _ReferenceDenseNet(nn.Module):
  depth: int
  growth: int
  num_classes: int
  compression: float = 0.5
  bottleneck_width: int = 4
  dropout_rate: float = 0.0
  memory_efficient: bool = False
  dtype: Any = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dtype = common.resolve_dtype(self.dtype)
    n = densenet.layers_per_block(self.depth)
    x = common.conv(2 * self.growth, 3, dtype, name="stem")(x.astype(dtype))
    for block in range(3):
      self.sow("intermediates", f"stage{block}_in", x)
      features = [x]
      for i in range(n):
        features.append(_ReferenceDenseLayer(
            self.growth, self.bottleneck_width, self.dropout_rate,
            self.memory_efficient, dtype,
            name=f"block{block}_layer{i}")(features, train))
      x = jnp.concatenate(features, axis=-1)
      self.sow("intermediates", f"stage{block}_out", x)
      if block < 2:
        x = nn.relu(common.batch_norm(
            train, dtype, name=f"transition{block}_norm")(x))
        x = common.conv(int(x.shape[-1] * self.compression), 1, dtype,
                        name=f"transition{block}_conv")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(common.batch_norm(train, dtype, name="final_norm")(x))
    return common.global_pool_logits(x, self.num_classes, dtype)


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _images(seed=0, shape=SHAPE):
  return jax.random.normal(_key(seed), shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _init(module):
  # Jitted: run eagerly, init compiles every operation on its own.
  return module.init(_key(1), _images())


def _variables(module):
  """Initial variables with every norm's statistics and affine moved off 0/1.

  Left at mean 0, variance 1, scale 1 and bias 0, the padding of the
  scanned layers would hide a mix-up of channels.
  """
  variables = _init(module)
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  rng = np.random.default_rng(0)
  moved = [leaf + rng.uniform(0.1, 0.5, leaf.shape).astype(leaf.dtype)
           for leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, moved)


@functools.partial(jax.jit, static_argnums=0)
def _results(module, variables, x):
  """Logits, new state and gradients in train mode; logits in eval mode."""

  def loss(params):
    logits, state = module.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        train=True, mutable=["batch_stats", "intermediates"])
    # A loss that weighs every logit differently, so no gradient is trivial.
    weights = jnp.arange(logits.size, dtype=logits.dtype).reshape(
        logits.shape) / logits.size
    return jnp.sum(weights * logits ** 2), (logits, state)

  (_, (logits, state)), grads = jax.value_and_grad(loss, has_aux=True)(
      variables["params"])
  return logits, state, grads, module.apply(variables, x, train=False)


def _assert_close(reference, new, rtol=1e-5, atol=1e-5):
  chex.assert_trees_all_close(new, reference, rtol=rtol, atol=atol)


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("layers_per_scan", [2, 3])
def test_scanned_densenet_is_the_reference_function(memory_efficient,
                                                    layers_per_scan):
  reference = _ReferenceDenseNet(DEPTH, GROWTH, CLASSES, dtype="float32",
                                 memory_efficient=memory_efficient)
  model = densenet.DenseNet(DEPTH, GROWTH, CLASSES, dtype="float32",
                            memory_efficient=memory_efficient,
                            layers_per_scan=layers_per_scan)
  # The same variables, to the bit, from the same key: checkpoints and
  # runs seeded before the change carry over.
  chex.assert_trees_all_equal(_init(model), _init(reference))
  variables = _variables(reference)
  x = _images(seed=2)
  expected, got = (_results(m, variables, x) for m in (reference, model))
  logits, state, grads, eval_logits = got
  _assert_close(expected[0], logits)
  _assert_close(expected[1]["batch_stats"], state["batch_stats"])
  _assert_close(expected[2], grads)
  _assert_close(expected[3], eval_logits)
  # The sown stage inputs and outputs, the feature losses' inputs, too.
  _assert_close(expected[1]["intermediates"], state["intermediates"])
  # Every statistic moved in the train step, so the comparison above is of
  # updated statistics, not of the inputs handed back.
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                       variables["batch_stats"], state["batch_stats"])
  assert all(jax.tree.leaves(moved))


def test_scanned_densenet_in_bfloat16_follows_the_unrolled_one():
  # bfloat16 goes through the same modules as float32; scanned and unrolled
  # layers round differently only in the order of the 1x1 conv's sums.
  unrolled, scanned = (
      densenet.DenseNet(DEPTH, GROWTH, CLASSES, dtype="bfloat16",
                        layers_per_scan=k) for k in (1, 3))
  variables = _variables(unrolled)
  x = _images(seed=2)
  expected, got = (_results(m, variables, x) for m in (unrolled, scanned))
  chex.assert_trees_all_equal_dtypes(expected, got)
  _assert_close(expected[0], got[0], rtol=0.05, atol=0.05)
  _assert_close(expected[3], got[3], rtol=0.05, atol=0.05)


def test_scanned_layers_drop_out_with_their_own_keys():
  model = densenet.DenseNet(DEPTH, GROWTH, CLASSES, dtype="float32",
                            dropout_rate=0.5, layers_per_scan=3)
  variables = _variables(model)
  x = _images(seed=2)

  @jax.jit
  def block_out(rng):
    _, state = model.apply(variables, x, train=True, rngs={"dropout": rng},
                           mutable=["batch_stats", "intermediates"])
    # The first block's three layers' outputs.
    return state["intermediates"]["stage0_out"][0][..., 2 * GROWTH:]

  first, again, other = (np.asarray(block_out(_key(seed)))
                         for seed in (3, 3, 4))
  np.testing.assert_array_equal(first, again)
  assert np.any(first != other)
  # About half of each layer's outputs dropped, and not the same half: one
  # key shared by the layers would drop the same positions in each.
  layers = np.split(first == 0, 3, axis=-1)
  for dropped in layers:
    assert 0.3 < np.mean(dropped) < 0.8
  assert np.mean(layers[0] == layers[1]) < 0.9
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])


def test_group_sizes():
  # pylint: disable=protected-access
  assert densenet._group_sizes(16, 1) == [1] * 16
  assert densenet._group_sizes(16, 4) == [4, 4, 4, 4]
  assert densenet._group_sizes(16, 6) == [6, 5, 5]
  assert densenet._group_sizes(16, 100) == [16]
  assert densenet._group_sizes(3, 2) == [2, 1]
