"""Tests for ban_jax.feature_losses on tiny, hand-computed feature maps."""

import math

import chex
import flax
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from ban_jax import feature_losses as fl

# Each program runs a step or two: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps


def nhwc(*channels):
  """Stacks per-channel (H, W) lists into a (1, H, W, C) float32 array."""
  return np.stack([np.asarray(c, np.float32) for c in channels], -1)[None]


# Channel 0 [[1, 0], [2, 1]], channel 1 [[1, 2], [0, 1]]: the mean of the
# squares is [[1, 2], [2, 1]], flattened [1, 2, 2, 1] with norm sqrt(10).
X = nhwc([[1, 0], [2, 1]], [[1, 2], [0, 1]])
A_X = np.array([1, 2, 2, 1]) / math.sqrt(10)
# One channel, attention [1, 0, 0, 0] after normalisation.
Y = nhwc([[3, 0], [0, 0]])


def test_attention_map_hand_values():
  a = jax.jit(fl.attention_map)(X)
  chex.assert_shape(a, (1, 4))
  np.testing.assert_allclose(a[0], A_X, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(fl.attention_map)(Y)[0], [1, 0, 0, 0])


def test_attention_map_of_small_features_is_still_unit_norm():
  # Norm of the flattened map 1e-8 (features 1e-4): far above the 1e-12
  # clamp on the norm, so it is normalised like any other map.
  a = jax.jit(fl.attention_map)(1e-4 * X)
  np.testing.assert_allclose(a[0], A_X, rtol=1e-5)


def test_attention_map_computes_in_float32():
  # Squared and normalised in bfloat16 (8 significant bits), the map would
  # be off by ~1e-3; upcast first, it is the float32 map of the same values.
  x16 = jnp.asarray(X * 1.01, jnp.bfloat16)
  a = jax.jit(fl.attention_map)(x16)
  chex.assert_type(a, jnp.float32)
  np.testing.assert_allclose(
      a, fl.attention_map(np.asarray(x16, np.float32)), rtol=1e-6)


def test_attention_map_of_zeros_is_zero_with_finite_gradient():
  zeros = np.zeros((1, 2, 2, 3), np.float32)
  np.testing.assert_array_equal(jax.jit(fl.attention_map)(zeros), 0.0)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(fl.attention_map(x))))(zeros)
  assert np.all(np.isfinite(grad))


def test_attention_transfer_hand_value_channels_may_differ():
  # ||a_x - a_y||^2 = (1/sqrt(10) - 1)^2 + 9/10 = 2 - 2/sqrt(10).
  # Student: two channels; teacher: one channel, sample 0 is Y and sample 1
  # is channel 0 of X, whose attention is [1, 0, 4, 1] / sqrt(18).
  student = np.concatenate([X, X])
  teacher = np.concatenate([Y, X[..., :1]])
  a_t1 = np.array([1, 0, 4, 1]) / math.sqrt(18)
  expected = ((2 - 2 / math.sqrt(10)) + np.sum((A_X - a_t1) ** 2)) / 2
  loss = jax.jit(fl.attention_transfer_loss)([student], [teacher])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Two stages add up, not average.
  loss2 = jax.jit(fl.attention_transfer_loss)([student, student],
                                              [teacher, teacher])
  np.testing.assert_allclose(loss2, 2 * expected, rtol=1e-5)


def test_attention_transfer_teacher_gets_no_gradient_student_does():
  student, teacher = X, Y
  grads = jax.jit(jax.grad(
      lambda s, t: fl.attention_transfer_loss([s], [t]), argnums=(0, 1)))(
          student, teacher)
  np.testing.assert_array_equal(grads[1], 0.0)
  assert np.any(np.abs(grads[0]) > 1e-3)


def test_attention_transfer_checks_shapes():
  with pytest.raises(ValueError, match="spatial"):
    fl.attention_transfer_loss([X], [np.zeros((1, 4, 4, 2), np.float32)])
  # A batch of one would broadcast against the student's batch of two.
  with pytest.raises(ValueError, match="Stage 0: .* differ in batch"):
    fl.attention_transfer_loss([np.concatenate([X, X])], [X])
  with pytest.raises(ValueError, match="Got 2 student and 1 teacher"):
    fl.attention_transfer_loss([X, X], [X])
  with pytest.raises(ValueError, match="Got 1 student and 2 teacher"):
    fl.attention_transfer_loss([X], [X, X])


def test_fsp_matrix_hand_values():
  end = nhwc([[1, 1], [0, 2]])
  g = jax.jit(fl.fsp_matrix)(X, end)
  chex.assert_shape(g, (1, 2, 1))
  # Channel 0 . end = 1 + 0 + 0 + 2 = 3; channel 1 . end = 1 + 2 + 0 + 2 = 5.
  np.testing.assert_allclose(g[0, :, 0], [3 / 4, 5 / 4], rtol=1e-6)


def test_fsp_matrix_pools_the_larger_map():
  small = nhwc([[2.0]], [[-1.0]])  # (1, 1, 1, 2)
  # Channel means 3 and 1 over the 2x2 grid (corner values 1 and 0).
  big = nhwc([[1, 2], [3, 6]], [[0, 0], [4, 0]])
  g = jax.jit(fl.fsp_matrix)(big, small)
  np.testing.assert_allclose(g[0], [[6, -3], [2, -1]], rtol=1e-6)
  g = jax.jit(fl.fsp_matrix)(small, big)
  np.testing.assert_allclose(g[0], [[6, 2], [-3, -1]], rtol=1e-6)
  # Start taller, end wider: both pooled to 1x1, means 2 and 3.
  tall = np.array([1.0, 3.0], np.float32).reshape(1, 2, 1, 1)
  wide = np.array([2.0, 4.0], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(jax.jit(fl.fsp_matrix)(tall, wide), [[[6.0]]],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="divide"):
    fl.fsp_matrix(np.ones((1, 3, 3, 1)), np.ones((1, 2, 2, 1)))
  # Heights divide, widths do not.
  with pytest.raises(ValueError, match="Cannot average-pool 2x3 down to 2x2"):
    fl.fsp_matrix(np.ones((1, 2, 3, 1)), np.ones((1, 2, 2, 1)))


def test_fsp_matrix_pools_height_and_width_separately():
  # start (4x2) is pooled to end's 2x1: each cell averages a 2x2 window.
  start = np.arange(8, dtype=np.float32).reshape(1, 4, 2, 1)
  end = np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1)
  # Means of [[0, 1], [2, 3]] and [[4, 5], [6, 7]]: 1.5 and 5.5.
  # G = (1.5 * 1 + 5.5 * -1) / 2 = -2.
  np.testing.assert_allclose(jax.jit(fl.fsp_matrix)(start, end), [[[-2.0]]],
                             rtol=1e-6)


def test_fsp_loss_hand_value():
  end = nhwc([[1, 1], [0, 2]])
  # Student G = [3/4, 5/4]^T; teacher G = 0 (zero end): ||G||^2 = 34/16.
  # Second pair: identical, contributes 0. Mean over 2 pairs.
  student_pairs = [(X, end), (X, end)]
  teacher_pairs = [(X, 0 * end), (X, end)]
  loss = jax.jit(fl.fsp_loss)(student_pairs, teacher_pairs)
  np.testing.assert_allclose(loss, (34 / 16) / 2, rtol=1e-6)
  # Batch mean: a second, identical sample leaves the value unchanged.
  double = lambda pairs: [(np.concatenate([s, s]), np.concatenate([e, e]))
                          for s, e in pairs]
  loss = jax.jit(fl.fsp_loss)(double(student_pairs), double(teacher_pairs))
  np.testing.assert_allclose(loss, (34 / 16) / 2, rtol=1e-6)


def test_fsp_teacher_gets_no_gradient_student_does():
  end = nhwc([[1, 1], [0, 2]])
  grads = jax.jit(jax.grad(
      lambda s, t: fl.fsp_loss([(s, end)], [(t, 2 * end)]), argnums=(0, 1)))(
          X, X)
  np.testing.assert_array_equal(grads[1], 0.0)
  assert np.any(np.abs(grads[0]) > 1e-3)


def test_fsp_loss_checks_shapes():
  with pytest.raises(ValueError, match="channel"):
    fl.fsp_loss([(X, X)], [(X, Y)])
  with pytest.raises(ValueError):
    fl.fsp_loss([], [])


def test_losses_run_in_float32():
  x16 = jnp.asarray(X, jnp.bfloat16)
  chex.assert_type(jax.jit(fl.attention_transfer_loss)([x16], [x16]),
                   jnp.float32)
  chex.assert_type(jax.jit(fl.fsp_loss)([(x16, x16)], [(x16, x16)]),
                   jnp.float32)


def test_check_grads_feature_losses():
  rng = np.random.default_rng(0)
  s0, t0 = (rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
            for _ in range(2))
  s1 = rng.standard_normal((2, 2, 2, 5)).astype(np.float32)
  t1 = rng.standard_normal((2, 2, 2, 5)).astype(np.float32)
  kwargs = dict(order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)
  jtu.check_grads(jax.jit(lambda s: fl.attention_transfer_loss([s], [t0])),
                  (s0,), **kwargs)
  jtu.check_grads(
      jax.jit(lambda a, b: fl.fsp_loss([(a, b)], [(t0, t1)])), (s0, s1),
      **kwargs)


def test_stage_features_from_nested_sown_dict():
  a, b, c, d = (np.full((1, 2, 2, 1), v, np.float32) for v in range(4))
  e = np.full((1, 1, 1, 1), 9.0, np.float32)
  tree = {"intermediates": {
      "stage10_out": (e,), "stage10_in": (d,),
      "stage2_in": (a,), "stage2_out": (b,),
      "other": (c,),
      "block": {"stage0_in": (c,), "stage0_out": (d,)},
  }}
  for variant in (tree, flax.core.freeze(tree), tree["intermediates"]):
    pairs, outputs = fl.stage_features(variant)
    starts = [float(s[0, 0, 0, 0]) for s, _ in pairs]
    ends = [float(t[0, 0, 0, 0]) for _, t in pairs]
    # Sorted numerically: 0, 2, 10 (not 0, 10, 2).
    assert starts == [2.0, 0.0, 3.0]
    assert ends == [3.0, 1.0, 9.0]
    assert [float(o[0, 0, 0, 0]) for o in outputs] == ends


def test_stage_features_errors():
  x = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match="stage1_out"):
    fl.stage_features({"stage0_in": (x,), "stage0_out": (x,),
                       "stage1_in": (x,)})
  with pytest.raises(ValueError, match="twice"):
    fl.stage_features({"stage0_in": (x,), "stage0_out": (x,),
                       "sub": {"stage0_in": (x,)}})
  with pytest.raises(ValueError, match="No stage"):
    fl.stage_features({"logits": (x,)})


def test_stage_features_matches_whole_names_only():
  x, y = (np.full((1, 1, 1, 1), v, np.float32) for v in (1.0, 2.0))
  pairs, _ = fl.stage_features({
      "stage0_in": (x,), "stage0_out": (x,),
      "stage1_input": (y,), "substage0_in": (y,), "stage0_outer": (y,)})
  assert len(pairs) == 1
  assert float(pairs[0][0][0, 0, 0, 0]) == 1.0
  assert float(pairs[0][1][0, 0, 0, 0]) == 1.0


def test_stage_features_takes_first_sown_value():
  first, second = (np.full((1, 1, 1, 1), v, np.float32) for v in (1.0, 2.0))
  pairs, outputs = fl.stage_features(
      {"stage0_in": (first, second), "stage0_out": (second, first)})
  assert float(pairs[0][0][0, 0, 0, 0]) == 1.0
  assert float(outputs[0][0, 0, 0, 0]) == 2.0
