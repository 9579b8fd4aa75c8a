"""Feature-level distillation baselines from the paper's related work.

BAN distils through logits only; the authors report that feature-level
losses were systematically slightly worse. These two are the standard
feature-level baselines, for comparison:

* Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match the
  normalised spatial attention maps of student and teacher stages.
* FSP, flow of solution procedure (Yim et al., CVPR 2017): match the Gram
  matrices between the input and the output of each stage.

All functions are pure and jit-able, take NHWC feature maps, compute in
float32 whatever the models' dtype, and give the teacher's features no
gradient. The models sow `stage{k}_in` and `stage{k}_out` into the Flax
'intermediates' collection; `stage_features` collects them.
"""

from collections.abc import Mapping, Sequence
import re
from typing import Any

import jax
import jax.numpy as jnp

# F.normalize's default in the attention-transfer reference code.
_NORM_EPS = 1e-12
_STAGE_NAME = re.compile(r"stage(\d+)_(in|out)")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def attention_map(features: jax.Array) -> jax.Array:
  """Spatial attention map of Zagoruyko & Komodakis (2017), p = 2.

  a = mean over channels of features^2, flattened per sample and divided by
  its L2 norm (clamped below at 1e-12, so all-zero maps stay zero).

  Args:
    features: (b, H, W, C) feature map.

  Returns:
    (b, H*W) float32 maps, each of unit L2 norm (or zero).
  """
  features = _f32(features)
  attention = jnp.mean(jnp.square(features), axis=-1)
  attention = attention.reshape(attention.shape[0], -1)
  squared_norm = jnp.sum(jnp.square(attention), axis=-1, keepdims=True)
  # rsqrt of the clamped square avoids the NaN gradient of a norm at zero.
  return attention * jax.lax.rsqrt(jnp.maximum(squared_norm, _NORM_EPS**2))


def attention_transfer_loss(student_features: Sequence[jax.Array],
                            teacher_features: Sequence[jax.Array]
                            ) -> jax.Array:
  """Attention-transfer loss summed over stages.

  loss = sum_k mean_s ||a(S_k)_s - a(T_k)_s||_2^2, with `attention_map` a
  and S_k, T_k the k-th student and teacher feature maps. This is the
  squared L2 distance between unit-norm, non-negative maps, so each stage
  contributes at most 2. The reference code instead takes a mean over
  batch x H*W and multiplies by beta / 2 = 500; to reproduce its scale,
  call this once per stage and weight it by 500 / (H*W).

  Args:
    student_features: the student's (b, H_k, W_k, C_k) feature maps.
    teacher_features: the teacher's maps at the same stages. Spatial sizes
      must match the student's; channel counts may differ.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the lists differ in length or a pair in spatial size.
  """
  if len(student_features) != len(teacher_features):
    raise ValueError(
        f"Got {len(student_features)} student and {len(teacher_features)} "
        "teacher feature maps.")
  loss = jnp.zeros((), jnp.float32)
  for k, (student, teacher) in enumerate(zip(student_features,
                                             teacher_features)):
    if student.shape[:3] != teacher.shape[:3]:
      raise ValueError(
          f"Stage {k}: student features {student.shape} and teacher "
          f"features {teacher.shape} differ in batch or spatial size.")
    diff = (attention_map(student)
            - attention_map(jax.lax.stop_gradient(teacher)))
    loss += jnp.mean(jnp.sum(jnp.square(diff), axis=-1))
  return loss


def _average_pool_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """Average-pools (b, H, W, C) down to (b, height, width, C)."""
  b, h, w, c = x.shape
  if h % height or w % width:
    raise ValueError(
        f"Cannot average-pool {h}x{w} down to {height}x{width}: the sizes "
        "must divide.")
  return x.reshape(b, height, h // height, width, w // width, c).mean((2, 4))


def fsp_matrix(start: jax.Array, end: jax.Array) -> jax.Array:
  """Flow-of-solution-procedure matrix of Yim et al. (2017).

  G[i, j] = sum_{h, w} start[h, w, i] * end[h, w, j] / (H * W), per sample.
  Where the two maps differ in spatial size (a stage that downsamples),
  each is first average-pooled, with non-overlapping windows, down to the
  smaller height and the smaller width; the sizes must divide.

  Args:
    start: (b, H1, W1, C1) feature map, e.g. a stage's input.
    end: (b, H2, W2, C2) feature map, e.g. the same stage's output.

  Returns:
    (b, C1, C2) float32 matrices.
  """
  start, end = _f32(start), _f32(end)
  height = min(start.shape[1], end.shape[1])
  width = min(start.shape[2], end.shape[2])
  start = _average_pool_to(start, height, width)
  end = _average_pool_to(end, height, width)
  # HIGHEST: on GPUs the default float32 matmul precision is TF32.
  gram = jnp.einsum("bhwi,bhwj->bij", start, end,
                    precision=jax.lax.Precision.HIGHEST)
  return gram / (height * width)


def fsp_loss(student_pairs: Sequence[tuple[jax.Array, jax.Array]],
             teacher_pairs: Sequence[tuple[jax.Array, jax.Array]]
             ) -> jax.Array:
  """FSP loss averaged over pairs (Yim et al., 2017, equal weights).

  loss = mean_s (1 / K) sum_k ||G(S_k)_s - G(T_k)_s||_F^2, with `fsp_matrix`
  G and K (start, end) pairs: Yim et al.'s loss with lambda_k = 1 / K.

  Args:
    student_pairs: the student's (start, end) feature-map pairs.
    teacher_pairs: the teacher's pairs at the same places. Channel counts
      must match the student's (G is C1 x C2); spatial sizes may differ.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the lists differ in length or are empty, or a pair's
      matrices differ in shape.
  """
  if len(student_pairs) != len(teacher_pairs) or not student_pairs:
    raise ValueError(
        f"Got {len(student_pairs)} student and {len(teacher_pairs)} teacher "
        "(start, end) pairs; need the same, nonzero number.")
  per_sample = 0.0
  for k, ((s_start, s_end), (t_start, t_end)) in enumerate(
      zip(student_pairs, teacher_pairs)):
    student_gram = fsp_matrix(s_start, s_end)
    teacher_gram = jax.lax.stop_gradient(fsp_matrix(t_start, t_end))
    if student_gram.shape != teacher_gram.shape:
      raise ValueError(
          f"Pair {k}: student FSP matrix {student_gram.shape} and teacher "
          f"FSP matrix {teacher_gram.shape} differ; channel counts must "
          "match.")
    per_sample += jnp.sum(jnp.square(student_gram - teacher_gram),
                          axis=(1, 2))
  return jnp.mean(per_sample) / len(student_pairs)


def _collect(tree: Mapping[str, Any], found: dict[tuple[int, str], Any],
             path: str) -> None:
  for key, value in tree.items():
    where = f"{path}/{key}"
    if isinstance(value, Mapping):
      _collect(value, found, where)
      continue
    match = _STAGE_NAME.fullmatch(str(key))
    if match is None:
      continue
    slot = (int(match.group(1)), match.group(2))
    if slot in found:
      raise ValueError(f"{key!r} found twice in intermediates (at {where}).")
    # `Module.sow` appends to a tuple; the first call's value is the one.
    found[slot] = value[0] if isinstance(value, (tuple, list)) else value


def stage_features(intermediates: Mapping[str, Any]
                   ) -> tuple[list[tuple[jax.Array, jax.Array]],
                              list[jax.Array]]:
  """Collects the sown stage inputs and outputs, sorted by stage index.

  Looks for keys `stage{k}_in` and `stage{k}_out` at any depth of a
  (possibly nested, possibly frozen) dict, e.g. the 'intermediates'
  collection returned by `model.apply(..., mutable=['intermediates'])` or
  the whole variables dict around it. Sown values are tuples; the first
  element is taken.

  Args:
    intermediates: the nested dict.

  Returns:
    (pairs, outputs): [(stage{k}_in, stage{k}_out)] for FSP and
    [stage{k}_out] for attention transfer, both in increasing k.

  Raises:
    ValueError: if no stage is found, a name occurs twice, or a stage lacks
      its input or output.
  """
  found = {}
  _collect(intermediates, found, "")
  if not found:
    raise ValueError("No stage{k}_in / stage{k}_out in the intermediates.")
  stages = sorted({stage for stage, _ in found})
  for stage in stages:
    for kind in ("in", "out"):
      if (stage, kind) not in found:
        raise ValueError(f"stage{stage}_{kind} missing from the intermediates.")
  pairs = [(found[(k, "in")], found[(k, "out")]) for k in stages]
  outputs = [found[(k, "out")] for k in stages]
  return pairs, outputs


def uses_features(distill) -> bool:
  """Whether the config adds a feature-level term (AT or FSP)."""
  return bool(distill.attention_weight or distill.fsp_weight)


def weighted_feature_loss(distill, student_intermediates,
                          teacher_intermediates) -> jax.Array:
  """The weighted attention-transfer and FSP terms between two networks."""
  student_pairs, student_outputs = stage_features(student_intermediates)
  teacher_pairs, teacher_outputs = stage_features(teacher_intermediates)
  loss = jnp.zeros((), jnp.float32)
  if distill.attention_weight:
    loss += distill.attention_weight * attention_transfer_loss(
        student_outputs, teacher_outputs)
  if distill.fsp_weight:
    loss += distill.fsp_weight * fsp_loss(student_pairs, teacher_pairs)
  return loss
