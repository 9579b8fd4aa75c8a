"""Tests for ban_jax.losses: hand-computed values and closed-form gradients."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from ban_jax import losses

# Each program runs a step or two: compiling it is the cost (conftest.py).
pytestmark = pytest.mark.few_steps

LN = math.log

# Two samples, three classes, chosen so that every softmax is rational:
# student softmax rows are [1/3, 1/3, 1/3] and [1/8, 2/8, 5/8]; teacher
# softmax rows are [1/4, 1/4, 1/2] and [1/2, 1/4, 1/4].
STUDENT = np.array([[0.0, 0.0, 0.0], [0.0, LN(2), LN(5)]], np.float32)
TEACHER = np.array([[0.0, 0.0, LN(2)], [LN(2), 0.0, 0.0]], np.float32)
LABELS = np.array([0, 2], np.int32)
# -log q[label] per sample.
CE_HAND = [LN(3), LN(8 / 5)]
# -sum_i p_i log q_i per sample.
KD_HAND = [LN(3),
           -(0.5 * LN(1 / 8) + 0.25 * LN(2 / 8) + 0.25 * LN(5 / 8))]


def np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def random_logits(seed, shape, scale=2.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(
      np.float32)


def check_grad(fn, x):
  """Finite-difference check of a float32 function, reverse mode."""
  jtu.check_grads(jax.jit(fn), (x,), order=1, modes=("rev",), eps=1e-3,
                  atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------- basic losses


def test_cross_entropy_hand_values_are_batch_mean():
  value = jax.jit(losses.cross_entropy)(STUDENT, LABELS)
  np.testing.assert_allclose(value, sum(CE_HAND) / 2, rtol=1e-6)
  # A mean over batch x classes would be three times smaller.
  assert abs(float(value) - sum(CE_HAND) / 6) > 0.1


def test_cross_entropy_casts_bfloat16_to_float32():
  value = jax.jit(losses.cross_entropy)(STUDENT.astype(jnp.bfloat16), LABELS)
  assert value.dtype == jnp.float32


def test_soft_cross_entropy_hand_values():
  targets = np_softmax(TEACHER).astype(np.float32)
  value = jax.jit(losses.soft_cross_entropy)(STUDENT, targets)
  np.testing.assert_allclose(value, sum(KD_HAND) / 2, rtol=1e-6)


def test_kd_loss_hand_values_at_t1():
  value = jax.jit(losses.kd_loss)(STUDENT, TEACHER)
  np.testing.assert_allclose(value, sum(KD_HAND) / 2, rtol=1e-6)
  assert abs(float(value) - sum(KD_HAND) / 6) > 0.1


def test_kd_loss_at_t2_has_t_squared_factor():
  # Logits doubled: the softmaxes at T = 2 are the T = 1 ones above.
  kd = jax.jit(functools.partial(losses.kd_loss, temperature=2.0))
  value = kd(2 * STUDENT, 2 * TEACHER)
  np.testing.assert_allclose(value, 4 * sum(KD_HAND) / 2, rtol=1e-6)


def test_kd_gradient_is_q_minus_p_over_batch():
  student, teacher = random_logits(0, (5, 7)), random_logits(1, (5, 7))
  grad = jax.jit(jax.grad(losses.kd_loss))(student, teacher)
  expected = (np_softmax(student) - np_softmax(teacher)) / 5
  np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["kd", "kd+label", "cwtm", "dkpp"])
def test_teacher_gets_no_gradient_from_any_loss(name):
  # Each loss stops the teacher's gradient itself, whatever the caller does.
  student, teacher = random_logits(0, (3, 4)), random_logits(1, (3, 4))
  labels = np.array([0, 1, 3], np.int32)
  grad = jax.jit(jax.grad(
      lambda t: losses.distillation_loss(name, student, t, labels,
                                         jax.random.key(0))))(teacher)
  np.testing.assert_array_equal(grad, np.zeros_like(teacher))
  weights_grad = jax.jit(jax.grad(
      lambda t: jnp.sum(losses.cwtm_weights(t) * jnp.arange(3.0))))(teacher)
  np.testing.assert_array_equal(weights_grad, np.zeros_like(teacher))


# -------------------------------------------------------------------- CWTM


def test_cwtm_hand_values():
  # TEACHER's max probabilities are equal (1/2, 1/2); sharpen the second.
  teacher = np.array([[0.0, 0.0, LN(2)], [0.0, LN(2), LN(5)]], np.float32)
  # Max probabilities 1/2 and 5/8 -> weights 4/9 and 5/9.
  value = jax.jit(losses.cwtm_loss)(STUDENT, teacher, LABELS)
  np.testing.assert_allclose(
      value, 4 / 9 * CE_HAND[0] + 5 / 9 * CE_HAND[1], rtol=1e-6)
  weights = jax.jit(losses.cwtm_weights)(teacher)
  np.testing.assert_allclose(weights, [4 / 9, 5 / 9], rtol=1e-6)


def test_cwtm_weights_sum_to_one():
  weights = jax.jit(losses.cwtm_weights)(random_logits(2, (16, 10)))
  np.testing.assert_allclose(jnp.sum(weights), 1.0, rtol=1e-6)
  assert np.all(weights > 0)


def test_cwtm_gradient_is_weighted_label_gradient():
  student, teacher = random_logits(3, (6, 5)), random_logits(4, (6, 5))
  labels = np.array([0, 1, 2, 3, 4, 0], np.int32)
  grad = jax.jit(jax.grad(losses.cwtm_loss))(student, teacher, labels)
  max_p = np_softmax(teacher).max(-1)
  w = max_p / max_p.sum()
  expected = w[:, None] * (np_softmax(student) - np.eye(5)[labels])
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_cwtm_ignores_whether_teacher_is_right():
  student = random_logits(5, (2, 3))
  labels = np.array([0, 0], np.int32)
  right = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  wrong = np.array([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
  fn = jax.jit(jax.value_and_grad(losses.cwtm_loss))
  value_right, grad_right = fn(student, right, labels)
  value_wrong, grad_wrong = fn(student, wrong, labels)
  np.testing.assert_allclose(value_right, value_wrong, rtol=1e-6)
  np.testing.assert_allclose(grad_right, grad_wrong, atol=1e-7)
  # And it does depend on the teacher's confidence.
  flat = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]], np.float32)
  assert abs(float(fn(student, flat, labels)[0] - value_right)) > 1e-3


def test_cwtm_with_equal_confidence_is_cross_entropy():
  value = jax.jit(losses.cwtm_loss)(STUDENT, np.zeros((2, 3), np.float32),
                                    LABELS)
  np.testing.assert_allclose(value, sum(CE_HAND) / 2, rtol=1e-6)


# -------------------------------------------------------------------- DKPP


# One jitted function for all DKPP tests, so that shapes shared between
# tests compile once (sorting compiles slowly on CPU).
_DKPP = jax.jit(losses.dkpp_targets, static_argnames="keep_argmax")


def _dkpp(keep_argmax=False):
  return functools.partial(_DKPP, keep_argmax=keep_argmax)


@pytest.mark.parametrize("keep_argmax", [False, True])
def test_dkpp_rows_are_permutations_of_teacher(keep_argmax):
  teacher = random_logits(6, (32, 10))
  labels = np.random.default_rng(7).integers(0, 10, 32).astype(np.int32)
  targets = np.asarray(_dkpp(keep_argmax)(jax.random.key(0), teacher, labels))
  probs = np_softmax(teacher)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.sort(targets, -1), np.sort(probs, -1),
                             rtol=1e-5, atol=1e-7)
  anchor = probs.argmax(-1) if keep_argmax else labels
  np.testing.assert_allclose(targets[np.arange(32), anchor], probs.max(-1),
                             rtol=1e-5)


def test_dkpp_anchor_label_vs_argmax_when_teacher_is_wrong():
  # p = [0.1, 0.6, 0.3] (argmax 1), label 2.
  teacher = np.log(np.array([[0.1, 0.6, 0.3]], np.float32))
  labels = np.array([2], np.int32)
  by_label = np.asarray(_dkpp(False)(jax.random.key(1), teacher, labels))[0]
  by_argmax = np.asarray(_dkpp(True)(jax.random.key(1), teacher, labels))[0]
  np.testing.assert_allclose(by_label[2], 0.6, rtol=1e-5)
  np.testing.assert_allclose(sorted(by_label[:2]), [0.1, 0.3], rtol=1e-5)
  np.testing.assert_allclose(by_argmax[1], 0.6, rtol=1e-5)
  np.testing.assert_allclose(sorted(by_argmax[[0, 2]]), [0.1, 0.3], rtol=1e-5)


def test_dkpp_readings_coincide_when_teacher_is_right():
  teacher = random_logits(8, (32, 10))
  labels = np.asarray(jnp.argmax(teacher, -1)).astype(np.int32)
  for keep_argmax in (False, True):
    targets = np.asarray(_dkpp(keep_argmax)(jax.random.key(2), teacher,
                                            labels))
    np.testing.assert_allclose(targets[np.arange(32), labels],
                               np_softmax(teacher).max(-1), rtol=1e-5)


def test_dkpp_permutes_differently_per_sample_and_per_key():
  b, n = 32, 10
  teacher = np.tile(np.arange(n, dtype=np.float32)[None], (b, 1))
  labels = np.full((b,), 3, np.int32)
  fn = _dkpp()
  targets = np.asarray(fn(jax.random.key(0), teacher, labels))
  distinct = {tuple(np.round(row, 6)) for row in targets}
  # 9! orders: duplicates among 32 draws are possible but rare.
  assert len(distinct) >= b - 2
  other = np.asarray(fn(jax.random.key(1), teacher, labels))
  assert np.mean(np.any(other != targets, axis=-1)) > 0.9
  # Same key, same batch: same targets (the function is deterministic).
  np.testing.assert_array_equal(fn(jax.random.key(0), teacher, labels),
                                targets)


def test_dkpp_permutations_are_uniform_and_independent_across_samples():
  b, n = 2000, 4
  # Identical rows p = softmax([3, 2, 1, 0]); label 0 = argmax, so slot 0
  # is fixed and the other three values are shuffled over slots 1..3.
  teacher = np.tile(np.array([[3.0, 2.0, 1.0, 0.0]], np.float32), (b, 1))
  labels = np.zeros((b,), np.int32)
  targets = np.asarray(_dkpp()(jax.random.key(3), teacher, labels))
  second = np_softmax(teacher[0])[1]
  where = np.argmax(np.isclose(targets, second, rtol=1e-5), axis=-1)
  assert set(where) == {1, 2, 3}
  counts = np.bincount(where, minlength=n)[1:]
  np.testing.assert_allclose(counts / b, 1 / 3, atol=0.05)
  # Joint positions of consecutive samples: 9 combinations, each about
  # 1/9 if the permutations are independent (a shared or shifted
  # permutation would concentrate on 3 of them).
  joint = np.bincount(3 * (where[:-1] - 1) + (where[1:] - 1), minlength=9)
  np.testing.assert_allclose(joint / (b - 1), 1 / 9, atol=0.04)


def test_dkpp_targets_carry_no_gradient():
  teacher = random_logits(9, (4, 5))
  labels = np.array([0, 1, 2, 3], np.int32)
  grad = jax.jit(jax.grad(lambda t: jnp.sum(
      losses.dkpp_targets(jax.random.key(0), t, labels) * jnp.arange(5.0))))(
          teacher)
  np.testing.assert_array_equal(grad, np.zeros_like(teacher))


def test_dkpp_loss_hand_value_with_exchangeable_dark_knowledge():
  # p = [1/2, 1/4, 1/4]: whatever the permutation, the target is p with
  # 1/2 moved to the label.
  teacher = np.array([[LN(2), 0.0, 0.0], [LN(2), 0.0, 0.0]], np.float32)
  value = jax.jit(losses.dkpp_loss)(jax.random.key(0), STUDENT, teacher,
                                    LABELS)
  expected = (LN(3) - (0.5 * LN(5 / 8) + 0.25 * LN(1 / 8)
                       + 0.25 * LN(2 / 8))) / 2
  np.testing.assert_allclose(value, expected, rtol=1e-6)


# ------------------------------------------------ DKPP, one per example


def _slot_positions(probs_row, target_row, anchor):
  """Where each non-anchor slot's value went: slot j holds the j-th of the
  probabilities other than the max, in class order (dkpp_targets's slots)."""
  others = np.delete(probs_row, np.argmax(probs_row))
  return tuple(int(np.flatnonzero(np.isclose(target_row, v, rtol=1e-6))[0])
               for v in others)


@pytest.mark.parametrize("keep_argmax", [False, True])
def test_dkpp_example_gets_its_permutation_wherever_it_sits(keep_argmax):
  # A table of 100 examples; two batches share examples 3, 17 and 42 at
  # other positions, next to other examples.
  teacher = random_logits(20, (100, 10))
  labels = np.random.default_rng(21).integers(0, 10, 100).astype(np.int32)
  fn = _dkpp(keep_argmax)
  key = jax.random.key(5)

  def targets(ids):
    ids = np.asarray(ids, np.int32)
    return np.asarray(fn(key, teacher[ids], labels[ids], example_ids=ids))

  first, second = targets([3, 17, 42, 8]), targets([42, 99, 3, 5, 17, 61])
  for i, j in ((0, 2), (1, 4), (2, 0)):
    np.testing.assert_array_equal(first[i], second[j])
  # A batch of one: nothing about the other rows matters.
  np.testing.assert_array_equal(targets([17])[0], first[1])
  # Still a permutation with the max at the anchor.
  probs = np_softmax(teacher[[3, 17, 42, 8]])
  np.testing.assert_allclose(np.sort(first, -1), np.sort(probs, -1),
                             rtol=1e-5, atol=1e-7)
  # Another generation's key: other permutations.
  other = np.asarray(fn(jax.random.key(6), teacher[:32], labels[:32],
                        example_ids=np.arange(32, dtype=np.int32)))
  mine = targets(np.arange(32))
  assert np.mean(np.any(other != mine, axis=-1)) > 0.9


def test_dkpp_example_keeps_its_permutation_across_augmented_views():
  # Two views of example 7 give the teacher different probabilities (same
  # argmax and label); the slots land on the same classes in both.
  views = random_logits(22, (2, 8))
  views[:, 2] += 10.0  # Class 2 is the max in both views; label 2.
  ids = np.array([7, 7], np.int32)
  labels = np.array([2, 2], np.int32)
  targets = np.asarray(_dkpp()(jax.random.key(8), views, labels,
                               example_ids=ids))
  probs = np_softmax(views)
  assert not np.allclose(targets[0], targets[1])
  positions = [_slot_positions(probs[v], targets[v], 2) for v in (0, 1)]
  assert positions[0] == positions[1]
  # Not the identity: the slots really are shuffled.
  assert positions[0] != (0, 1, 3, 4, 5, 6, 7)


def test_dkpp_example_permutations_are_uniform_and_independent_across_ids():
  # 6000 ids, p = softmax([3, 2, 1, 0]), label 0: each id's permutation of
  # the other three values is one of 3! = 6, each expected 1000 times.
  # Chi-square statistics with fixed keys (deterministic, so no flakes)
  # against bounds at about the 1e-4 tail of the chi-square law.
  b, n = 6000, 4
  teacher = np.tile(np.array([[3.0, 2.0, 1.0, 0.0]], np.float32), (b, 1))
  labels = np.zeros((b,), np.int32)
  ids = np.arange(b, dtype=np.int32)
  targets = np.asarray(_dkpp()(jax.random.key(9), teacher, labels,
                               example_ids=ids))
  probs = np_softmax(teacher[0])
  positions = np.stack([np.argmax(np.isclose(targets, probs[k], rtol=1e-5),
                                  axis=-1) for k in (1, 2, 3)], -1)
  assert (positions[:, 0] != positions[:, 1]).all()
  # Each value's class position: uniform over 1..3 (2 dof; 1e-4: 18.4).
  for k in range(3):
    counts = np.bincount(positions[:, k], minlength=n)[1:]
    assert np.sum((counts - b / 3) ** 2 / (b / 3)) < 20, counts
  # The whole permutation: uniform over the 6 (5 dof; 1e-4: 25.7).
  code = 9 * (positions[:, 0] - 1) + 3 * (positions[:, 1] - 1) + (
      positions[:, 2] - 1)
  counts = np.unique(code, return_counts=True)[1]
  assert len(counts) == 6
  assert np.sum((counts - b / 6) ** 2 / (b / 6)) < 27, counts
  # Neighbouring ids are independent: the 36 joint permutations of ids k
  # and k + 1 are uniform too (35 dof; 1e-4: 73.4).
  index = np.searchsorted(np.unique(code), code)
  joint = np.bincount(6 * index[:-1] + index[1:], minlength=36)
  expected = (b - 1) / 36
  assert np.sum((joint - expected) ** 2 / expected) < 75, joint


def test_distillation_loss_passes_the_example_ids_to_dkpp():
  teacher = random_logits(23, (4, 6))
  labels = np.array([0, 5, 2, 2], np.int32)
  ids = np.array([11, 3, 7, 0], np.int32)
  key = jax.random.key(10)
  student = random_logits(24, (4, 6))
  value = jax.jit(functools.partial(losses.distillation_loss, "dkpp"))(
      student, teacher, labels, key, example_ids=ids)
  expected = losses.soft_cross_entropy(
      student, _dkpp()(key, teacher, labels, example_ids=ids))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  per_step = losses.distillation_loss("dkpp", student, teacher, labels, key)
  assert float(per_step) != pytest.approx(float(value), rel=1e-6)
  assert losses.DKPP_PERMUTATIONS == ("example", "step")


# ----------------------------------------------------------- Eq. 7 split


def test_dark_knowledge_split_sums_to_kd_gradient_with_disjoint_support():
  student, teacher = random_logits(10, (8, 6)), random_logits(11, (8, 6))
  labels = np.random.default_rng(12).integers(0, 6, 8).astype(np.int32)
  true_part, dark_part = jax.jit(losses.dark_knowledge_split)(
      student, teacher, labels)
  whole = jax.jit(jax.grad(losses.kd_loss))(student, teacher)
  np.testing.assert_allclose(true_part + dark_part, whole, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(true_part) * np.asarray(dark_part),
                                0.0)
  mask = np.eye(6, dtype=bool)[labels]
  np.testing.assert_array_equal(np.asarray(true_part)[~mask], 0.0)
  np.testing.assert_array_equal(np.asarray(dark_part)[mask], 0.0)


def test_dark_knowledge_split_with_one_hot_teacher_is_label_gradient():
  student = random_logits(13, (4, 5))
  labels = np.array([1, 0, 4, 2], np.int32)
  teacher = 100.0 * np.eye(5, dtype=np.float32)[labels]
  true_part, dark_part = jax.jit(losses.dark_knowledge_split)(
      student, teacher, labels)
  q = np_softmax(student)
  mask = np.eye(5, dtype=bool)[labels]
  np.testing.assert_allclose(np.asarray(true_part)[mask],
                             (q[mask] - 1) / 4, atol=1e-6)
  np.testing.assert_allclose(dark_part, np.where(mask, 0.0, q / 4), atol=1e-6)


def test_dark_knowledge_share_hand_values():
  fn = jax.jit(losses.dark_knowledge_share)
  uniform = np.zeros((1, 3), np.float32)
  label = np.array([0], np.int32)
  # One-hot teacher, uniform student: true part (1/3 - 1)^2 = 4/9, dark
  # part 2 * (1/3)^2 = 2/9, share 1/3.
  one_hot = np.array([[100.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(fn(uniform, one_hot, label), 1 / 3, rtol=1e-5)
  # Student matches the teacher at the label only: all dark.
  teacher = np.log(np.array([[1 / 3, 1 / 2, 1 / 6]], np.float32))
  np.testing.assert_allclose(fn(uniform, teacher, label), 1.0, rtol=1e-6)
  # Identical: defined as 0, and no NaN.
  assert float(fn(uniform, uniform, label)) == 0.0
  grad = jax.jit(jax.grad(losses.dark_knowledge_share))(uniform, uniform,
                                                        label)
  assert np.all(np.isfinite(grad))


# Two samples at T = 2, logits 2 log(...) so that the softmaxes at T are
# rational: q_T rows [1/4, 1/4, 1/2] and [1/3, 1/3, 1/3]; p_T rows
# [1/4, 1/2, 1/4] and [1/6, 2/6, 3/6]; labels 1 and 1.
STUDENT_T2 = 2 * np.log(np.array([[1, 1, 2], [1, 1, 1]], np.float32))
TEACHER_T2 = 2 * np.log(np.array([[1, 2, 1], [1, 2, 3]], np.float32))
LABELS_T2 = np.array([1, 1], np.int32)


def test_dark_knowledge_split_at_temperature_two_hand_values():
  # T (q_T - p_T) / b = (q_T - p_T): rows [0, -1/4, 1/4] and
  # [1/6, 0, -1/6].
  true_part, dark_part = jax.jit(functools.partial(
      losses.dark_knowledge_split, temperature=2.0))(STUDENT_T2, TEACHER_T2,
                                                     LABELS_T2)
  np.testing.assert_allclose(true_part, [[0, -1 / 4, 0], [0, 0, 0]],
                             atol=1e-6)
  np.testing.assert_allclose(dark_part, [[0, 0, 1 / 4], [1 / 6, 0, -1 / 6]],
                             atol=1e-6)


@pytest.mark.parametrize("teacher_weight", [1.0, 3.0])
def test_kd_loss_split_at_temperature_two(teacher_weight):
  split = jax.jit(functools.partial(
      losses.loss_gradient_split, "kd", temperature=2.0,
      teacher_weight=teacher_weight))
  rest, dark = split(STUDENT_T2, TEACHER_T2, LABELS_T2)
  np.testing.assert_allclose(
      rest, teacher_weight * np.array([[0, -1 / 4, 0], [0, 0, 0]]),
      atol=1e-6)
  np.testing.assert_allclose(
      dark, teacher_weight * np.array([[0, 0, 1 / 4], [1 / 6, 0, -1 / 6]]),
      atol=1e-6)
  # The parts sum to the gradient of the loss that trains the student.
  grad = jax.grad(lambda z: losses.distillation_loss(
      "kd", z, TEACHER_T2, LABELS_T2, None, temperature=2.0,
      teacher_weight=teacher_weight))(STUDENT_T2)
  np.testing.assert_allclose(rest + dark, grad, atol=1e-6)
  # ||dark||^2 = 1/16 + 2/36 = 17/144, ||true||^2 = 1/16 = 9/144.
  share = losses.loss_dark_knowledge_share(
      "kd", STUDENT_T2, TEACHER_T2, LABELS_T2, temperature=2.0,
      teacher_weight=teacher_weight)
  np.testing.assert_allclose(share, 17 / 26, rtol=1e-5)
  # The T = 1 share of the same logits measures something else: rows
  # (q - p)/2 = [0, -1/4, 1/4] and [11, 2, -13]/84, share 731/1176.
  t1 = losses.dark_knowledge_share(STUDENT_T2, TEACHER_T2, LABELS_T2)
  np.testing.assert_allclose(t1, 731 / 1176, rtol=1e-5)


def test_kd_plus_label_split_hand_values():
  # STUDENT / TEACHER, label weight 1, teacher weight 2, T = 1, b = 2.
  # Label CE gradient (q - y)/2: [-1/3, 1/6, 1/6] and [1/16, 1/8, -3/16].
  # KD gradient (q - p)/2: [1/24, 1/24, -1/12] and [-3/16, 0, 3/16]; its
  # true-label entries are 1/24 (label 0) and 3/16 (label 2).
  rest, dark = jax.jit(functools.partial(
      losses.loss_gradient_split, "kd+label", teacher_weight=2.0))(
          STUDENT, TEACHER, LABELS)
  np.testing.assert_allclose(
      dark, [[0, 1 / 12, -1 / 6], [-3 / 8, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(
      rest, [[-1 / 3 + 1 / 12, 1 / 6, 1 / 6], [1 / 16, 1 / 8, -3 / 16 + 3 / 8]],
      atol=1e-6)
  grad = jax.grad(lambda z: losses.distillation_loss(
      "kd+label", z, TEACHER, LABELS, None, teacher_weight=2.0))(STUDENT)
  np.testing.assert_allclose(rest + dark, grad, atol=1e-6)
  # ||dark||^2 = 101/576 = 404/2304, ||rest||^2 = 398/2304.
  share = losses.loss_dark_knowledge_share(
      "kd+label", STUDENT, TEACHER, LABELS, teacher_weight=2.0)
  np.testing.assert_allclose(share, 202 / 401, rtol=1e-5)
  # Without the teacher term nothing is dark; without the label term it is
  # kd's split.
  assert float(losses.loss_dark_knowledge_share(
      "kd+label", STUDENT, TEACHER, LABELS, teacher_weight=0.0)) == 0.0
  np.testing.assert_allclose(
      losses.loss_dark_knowledge_share("kd+label", STUDENT, TEACHER, LABELS,
                                       label_weight=0.0),
      losses.dark_knowledge_share(STUDENT, TEACHER, LABELS), rtol=1e-6)


@pytest.mark.parametrize("name", ["ce", "cwtm", "dkpp"])
def test_losses_without_dark_knowledge_have_no_split(name):
  assert losses.DARK_KNOWLEDGE_LOSSES == ("kd", "kd+label")
  with pytest.raises(ValueError, match="no Eq. 7 dark-knowledge term"):
    losses.loss_gradient_split(name, STUDENT, TEACHER, LABELS)


# ---------------------------------------------------------------- metrics


def test_kl_divergence_hand_values():
  fn = jax.jit(losses.kl_divergence)
  x = random_logits(14, (3, 4))
  np.testing.assert_allclose(fn(x, x), 0.0, atol=1e-6)
  # p = [1/2, 1/2], q = [1/4, 3/4]; the second sample has KL 0.
  teacher = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)
  student = np.array([[0.0, LN(3)], [1.0, 2.0]], np.float32)
  expected = (0.5 * LN(2) + 0.5 * LN(2 / 3)) / 2
  np.testing.assert_allclose(fn(teacher, student), expected, rtol=1e-5)
  # The argument order matters: KL(q || p) differs.
  reverse = (0.25 * LN(0.5) + 0.75 * LN(1.5)) / 2
  np.testing.assert_allclose(fn(student, teacher), reverse, rtol=1e-5)


def test_kl_divergence_with_saturated_teacher_is_finite():
  teacher = np.array([[200.0, 0.0, -200.0]], np.float32)
  student = np.zeros((1, 3), np.float32)
  np.testing.assert_allclose(jax.jit(losses.kl_divergence)(teacher, student),
                             LN(3), rtol=1e-5)


def test_agreement_hand_values():
  teacher = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
  student = np.array([[2, 1, 0], [0, 5, 1], [1, 0, 0], [3, 0, 0]], np.float32)
  np.testing.assert_allclose(jax.jit(losses.agreement)(teacher, student),
                             0.75)


# -------------------------------------------------------- gradient checks


def test_check_grads_all_losses():
  student, teacher = random_logits(15, (4, 5), 1.0), random_logits(16, (4, 5))
  labels = np.array([0, 3, 1, 4], np.int32)
  key = jax.random.key(4)
  check_grad(lambda z: losses.cross_entropy(z, labels), student)
  check_grad(lambda z: losses.kd_loss(z, teacher), student)
  check_grad(lambda z: losses.kd_loss(z, teacher, temperature=3.0), student)
  check_grad(lambda z: losses.cwtm_loss(z, teacher, labels), student)
  check_grad(lambda z: losses.dkpp_loss(key, z, teacher, labels), student)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name,kwargs,expected", [
    ("ce", {}, sum(CE_HAND) / 2),
    ("ce", {"label_weight": 7.0}, sum(CE_HAND) / 2),
    ("kd", {}, sum(KD_HAND) / 2),
    ("kd", {"teacher_weight": 0.5}, 0.5 * sum(KD_HAND) / 2),
    ("kd+label", {}, (sum(CE_HAND) + sum(KD_HAND)) / 2),
    ("kd+label", {"label_weight": 2.0, "teacher_weight": 3.0},
     (2 * sum(CE_HAND) + 3 * sum(KD_HAND)) / 2),
    # Teacher max probabilities 1/2 and 1/2: equal weights.
    ("cwtm", {"teacher_weight": 9.0}, sum(CE_HAND) / 2),
])
def test_distillation_loss_dispatch(name, kwargs, expected):
  fn = jax.jit(functools.partial(losses.distillation_loss, name, **kwargs))
  value = fn(STUDENT, TEACHER, LABELS, jax.random.key(0))
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_distillation_loss_kd_temperature():
  fn = jax.jit(functools.partial(losses.distillation_loss, "kd+label",
                                 temperature=2.0))
  value = fn(np.stack([2 * STUDENT[0], STUDENT[1]]), 2 * TEACHER, LABELS,
             None)
  # At T = 2 the first sample's softmaxes are the hand ones; the label
  # term sees the logits at T = 1.
  q_t = np_softmax(np.stack([STUDENT[0], STUDENT[1] / 2]))
  p_t = np_softmax(TEACHER)
  kd = -np.mean(np.sum(p_t * np.log(q_t), -1))
  ce = (CE_HAND[0] + CE_HAND[1]) / 2
  np.testing.assert_allclose(value, ce + 4 * kd, rtol=1e-5)


def test_distillation_loss_dkpp_and_ce_without_teacher():
  teacher = np.array([[LN(2), 0.0, 0.0], [LN(2), 0.0, 0.0]], np.float32)
  value = jax.jit(functools.partial(losses.distillation_loss, "dkpp"))(
      STUDENT, teacher, LABELS, jax.random.key(5))
  expected = (LN(3) - (0.5 * LN(5 / 8) + 0.25 * LN(1 / 8)
                       + 0.25 * LN(2 / 8))) / 2
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  value = losses.distillation_loss("ce", STUDENT, None, LABELS, None)
  np.testing.assert_allclose(value, sum(CE_HAND) / 2, rtol=1e-6)


def test_distillation_loss_errors():
  assert losses.DISTILL_LOSSES == ("ce", "kd", "kd+label", "cwtm", "dkpp")
  with pytest.raises(ValueError) as error:
    losses.distillation_loss("ban", STUDENT, TEACHER, LABELS, None)
  for name in losses.DISTILL_LOSSES:
    assert repr(name) in str(error.value)
  with pytest.raises(ValueError, match="rng"):
    losses.distillation_loss("dkpp", STUDENT, TEACHER, LABELS, None)
  with pytest.raises(ValueError, match="teacher"):
    losses.distillation_loss("kd", STUDENT, None, LABELS, None)


def test_losses_are_float32_scalars():
  student = STUDENT.astype(jnp.bfloat16)
  teacher = TEACHER.astype(jnp.bfloat16)

  def all_losses(key):
    return [losses.distillation_loss(name, student, teacher, LABELS, key)
            for name in losses.DISTILL_LOSSES]

  for value in jax.jit(all_losses)(jax.random.key(0)):
    chex.assert_shape(value, ())
    chex.assert_type(value, jnp.float32)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_bfloat16_logits_give_the_float32_values(temperature):
  # The losses cast before any arithmetic: bfloat16 logits give exactly what
  # the same (bfloat16-representable) values give in float32. A softmax
  # taken in bfloat16 would be off by about 1e-3. (T = 3, since dividing by
  # 2 is exact in bfloat16 too.)
  student = jnp.asarray(random_logits(3, (64, 100), 4.0), jnp.bfloat16)
  teacher = jnp.asarray(random_logits(4, (64, 100), 4.0), jnp.bfloat16)
  labels = np.arange(64, dtype=np.int32)

  def all_losses(s, t):
    return [losses.distillation_loss(name, s, t, labels, jax.random.key(0),
                                     temperature=temperature)
            for name in losses.DISTILL_LOSSES]

  low = jax.jit(all_losses)(student, teacher)
  high = jax.jit(all_losses)(student.astype(jnp.float32),
                             teacher.astype(jnp.float32))
  for name, got, want in zip(losses.DISTILL_LOSSES, low, high):
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
