"""Losses on logits: pure, jit-able functions, averaged over the batch.

Every loss here is a mean over the batch of a per-sample sum over classes
(never a mean over batch x classes), so that its gradient with respect to
the student's logits is (q - p) / b, the paper's Eq. 5 divided by the batch.
All logits are cast to float32 first, so bfloat16 models get float32 losses.

Besides plain cross-entropy and knowledge distillation (BAN, BAN+L) this
module holds the paper's two ablations of the KD gradient (Section 3.2):

* CWTM, Confidence-Weighted by Teacher Max (Eq. 10): the label loss, each
  sample weighted by the teacher's confidence. Keeps the true-label term of
  Eq. 7 and drops the dark knowledge.
* DKPP, Dark Knowledge with Permuted Predictions (Eq. 11): the teacher's
  distribution with its non-max probabilities shuffled. Keeps the moments of
  the dark knowledge and destroys which wrong classes it points at. The
  shuffle is either one permutation per training example for the whole
  generation (`example_ids` with one key per generation: the
  `dkpp_permutation` "example") or a new one every step ("step", which
  averaged over steps is only label smoothing scaled by the teacher's
  confidence).

and diagnostics for Eq. 7 (how much of the KD gradient is dark knowledge),
the KL divergence and the top-1 agreement between teacher and student.

What the Eq. 7 split means for each loss. `dark_knowledge_share` always
splits the T = 1 KD gradient (q - p)/b, whatever the loss: it measures how
the student and the teacher differ, on and off the label. The split of the
gradient of the loss actually used, `loss_gradient_split`, exists only where
that loss has a teacher cross-entropy term, `kd` and `kd+label`
(`DARK_KNOWLEDGE_LOSSES`). CWTM has no dark-knowledge term at all: its
gradient is the label gradient weighted by the teacher's confidence. DKPP's
target does have off-label entries, but they are the teacher's
probabilities moved to other classes, not its class-wise dark knowledge, so
splitting them off would call noise dark knowledge; for DKPP only the T = 1
share (student against teacher) is reported.
"""

import jax
import jax.numpy as jnp

# Names accepted by `distillation_loss`, in the order of the paper's Table 2.
DISTILL_LOSSES = ("ce", "kd", "kd+label", "cwtm", "dkpp")
# The losses whose gradient has an Eq. 7 dark-knowledge part (a teacher
# cross-entropy term): `loss_gradient_split` accepts these.
DARK_KNOWLEDGE_LOSSES = ("kd", "kd+label")
# How DKPP draws its permutations (config.distill.dkpp_permutation):
# `example`, one per training example for the whole generation (a function
# of the generation's key and the example's index); `step`, a new one for
# every example at every step.
DKPP_PERMUTATIONS = ("example", "step")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _teacher_probs(teacher_logits: jax.Array) -> jax.Array:
  """The teacher's softmax, which is a target and never gets a gradient."""
  return jax.nn.softmax(_f32(jax.lax.stop_gradient(teacher_logits)), axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the batch of -log softmax(logits)[label]."""
  log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return -jnp.mean(picked)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_i target_i * log softmax(logits)_i."""
  log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -jnp.mean(jnp.sum(_f32(target_probs) * log_probs, axis=-1))


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
            temperature: float = 1.0) -> jax.Array:
  """Cross-entropy from the student's to the teacher's softmax (BAN's loss).

  With a temperature T both softmaxes are taken at T and the loss is scaled
  by T^2 (Hinton et al., 2015), so that its gradient keeps the magnitude of
  the T = 1 loss. The paper uses T = 1, where the scale is 1. The teacher's
  logits carry no gradient.
  """
  # Cast before dividing: a bfloat16 division would round the logits twice.
  teacher_probs = jax.nn.softmax(
      _f32(jax.lax.stop_gradient(teacher_logits)) / temperature, axis=-1)
  loss = soft_cross_entropy(_f32(student_logits) / temperature, teacher_probs)
  return loss * temperature**2


def cwtm_weights(teacher_logits: jax.Array) -> jax.Array:
  """Per-sample CWTM weights w_s = max_i p_{i,s} / sum_u max_i p_{i,u}.

  The weights are normalised over the batch (they sum to 1) and carry no
  gradient.

  Args:
    teacher_logits: (b, n) teacher logits.

  Returns:
    (b,) float32 weights summing to 1.
  """
  max_probs = jnp.max(_teacher_probs(teacher_logits), axis=-1)
  return max_probs / jnp.sum(max_probs)


def cwtm_loss(student_logits: jax.Array, teacher_logits: jax.Array,
              labels: jax.Array) -> jax.Array:
  """Confidence-Weighted by Teacher Max (the paper's Eq. 10).

  loss = sum_s w_s * CE_s with CE_s = -log q_{label_s, s} and w_s from
  `cwtm_weights`. The weights are used whether or not the teacher is right.
  Since they sum to 1 they replace the 1/b of the plain batch mean, so with
  equally confident teachers this is exactly `cross_entropy`; the gradient
  with respect to the student logits is w_s (q_s - y_s) per sample.

  Args:
    student_logits: (b, n) student logits.
    teacher_logits: (b, n) teacher logits; only their max probability is used.
    labels: (b,) integer labels.

  Returns:
    A float32 scalar.
  """
  weights = cwtm_weights(teacher_logits)
  log_probs = jax.nn.log_softmax(_f32(student_logits), axis=-1)
  per_sample = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(weights * per_sample)


def dkpp_targets(rng: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                 *, keep_argmax: bool = False,
                 example_ids: jax.Array | None = None) -> jax.Array:
  """Targets of Dark Knowledge with Permuted Predictions (the paper's Eq. 11).

  Each row holds the teacher's max probability at an anchor position and the
  teacher's other n-1 probabilities in a uniformly random order on the other
  n-1 positions. The anchor is the true label (Eq. 11, default) or, with
  `keep_argmax=True`, the teacher's argmax (the wording of the Table 2
  caption: "all dimensions but the argmax permuted"). The two coincide
  wherever the teacher is right. Every row is a permutation of the teacher's
  probabilities, so it sums to 1 and keeps all their moments.

  Which permutation a row gets:
  * `example_ids=None`: one drawn from `rng` for the whole batch, rows
    independent; a new `rng` every step redraws them every step.
  * `example_ids` given: row i's permutation is a function of
    (rng, example_ids[i]) alone, not of its position in the batch nor of the
    other rows. With one `rng` per generation, each training example keeps
    one permutation of its teacher's non-anchor probabilities (taken in
    class order) through every epoch and every augmented view.

  Args:
    rng: a PRNG key.
    teacher_logits: (b, n) teacher logits.
    labels: (b,) integer labels.
    keep_argmax: anchor the max at the teacher's argmax instead of the label.
    example_ids: optional (b,) integer ids of the rows' examples, e.g. their
      indices in the train split.

  Returns:
    (b, n) float32 target probabilities, without gradient.
  """
  probs = _teacher_probs(teacher_logits)
  n = probs.shape[-1]
  if n < 2:
    return jax.lax.stop_gradient(probs)  # Nothing to permute.
  argmax = jnp.argmax(probs, axis=-1)[:, None]
  max_prob = jnp.take_along_axis(probs, argmax, axis=-1)
  anchor = argmax if keep_argmax else labels[:, None].astype(argmax.dtype)

  # The n-1 probabilities other than (one copy of) the max, in class order:
  # slot j holds class j before the argmax and class j+1 after it.
  slots = jnp.arange(n - 1)[None, :]
  others = jnp.take_along_axis(probs, slots + (slots >= argmax), axis=-1)
  # `permutation` sorts by random bits over enough rounds that ties do not
  # bias the permutation.
  if example_ids is None:
    # Row-wise independent shuffles from one key.
    others = jax.random.permutation(rng, others, axis=-1, independent=True)
  else:
    # One key per example, folded from its id: the same id gets the same
    # shuffle wherever it sits in whichever batch.
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        rng, jnp.asarray(example_ids))
    others = jax.vmap(jax.random.permutation)(keys, others)

  # Scatter back around the anchor: class i < anchor reads slot i and class
  # i > anchor reads slot i-1. The anchor's own read is replaced by the max.
  classes = jnp.arange(n)[None, :]
  read = jnp.clip(classes - (classes > anchor), 0, n - 2)
  targets = jnp.where(classes == anchor, max_prob,
                      jnp.take_along_axis(others, read, axis=-1))
  return jax.lax.stop_gradient(targets)


def dkpp_loss(rng: jax.Array, student_logits: jax.Array,
              teacher_logits: jax.Array, labels: jax.Array, *,
              keep_argmax: bool = False,
              example_ids: jax.Array | None = None) -> jax.Array:
  """Soft cross-entropy from the student to `dkpp_targets` (Eq. 11)."""
  targets = dkpp_targets(rng, teacher_logits, labels, keep_argmax=keep_argmax,
                         example_ids=example_ids)
  return soft_cross_entropy(student_logits, targets)


def dark_knowledge_split(student_logits: jax.Array, teacher_logits: jax.Array,
                         labels: jax.Array, *, temperature: float = 1.0
                         ) -> tuple[jax.Array, jax.Array]:
  """Splits the KD gradient into its true-label and dark parts (Eq. 7).

  The gradient of `kd_loss` at temperature T (T^2 * KD_T) with respect to
  the student logits is T (q_T - p_T) / b, with q_T and p_T the softmaxes
  at T; at the paper's T = 1 it is (q - p) / b. The true-label part keeps
  its entries at each sample's label and zeros elsewhere; the dark part
  keeps all other entries. The two have disjoint support and sum to the
  whole gradient. Computed in closed form; this is a diagnostic, so nothing
  is stopped from differentiating it.

  Args:
    student_logits: (b, n) student logits.
    teacher_logits: (b, n) teacher logits.
    labels: (b,) integer labels.
    temperature: the KD temperature T.

  Returns:
    (true_label_part, dark_part), two (b, n) float32 arrays.
  """
  student_probs = jax.nn.softmax(_f32(student_logits) / temperature, axis=-1)
  teacher_probs = jax.nn.softmax(_f32(teacher_logits) / temperature, axis=-1)
  grad = temperature * (student_probs - teacher_probs) / student_probs.shape[0]
  is_label = jax.nn.one_hot(labels, grad.shape[-1], dtype=jnp.bool_)
  zeros = jnp.zeros_like(grad)
  return jnp.where(is_label, grad, zeros), jnp.where(is_label, zeros, grad)


def _share(rest: jax.Array, dark: jax.Array) -> jax.Array:
  """||dark||^2 / (||rest||^2 + ||dark||^2); 0 where both are zero."""
  dark = jnp.sum(jnp.square(dark))
  whole = jnp.sum(jnp.square(rest)) + dark
  # The inner `where` keeps the unused branch finite, so no NaN leaks into
  # gradients when whole == 0.
  safe_whole = jnp.where(whole > 0, whole, 1.0)
  return jnp.where(whole > 0, dark / safe_whole, 0.0)


def dark_knowledge_share(student_logits: jax.Array, teacher_logits: jax.Array,
                         labels: jax.Array) -> jax.Array:
  """Fraction of the squared T = 1 KD gradient norm that is dark knowledge.

  share = ||dark||_2^2 / ||whole||_2^2 with the parts of
  `dark_knowledge_split` at T = 1, norms taken over the whole (b, n) array.
  The parts have disjoint support, so ||whole||^2 = ||true||^2 + ||dark||^2
  and the share lies in [0, 1]: 0 when the teacher only re-weights the
  label, 1 when the student already matches the teacher at the labels.
  Where the gradient is exactly zero (q = p) the share is defined as 0.

  It is always the T = 1 KD gradient, whatever loss trains the student: a
  measure of how student and teacher differ on and off the label (the
  per-epoch metric `kd_t1_dark_knowledge_share`). For the gradient of the
  loss actually used see `loss_dark_knowledge_share`.

  Args:
    student_logits: (b, n) student logits.
    teacher_logits: (b, n) teacher logits.
    labels: (b,) integer labels.

  Returns:
    A float32 scalar in [0, 1].
  """
  return _share(*dark_knowledge_split(student_logits, teacher_logits, labels))


def loss_gradient_split(name: str, student_logits: jax.Array,
                        teacher_logits: jax.Array, labels: jax.Array, *,
                        temperature: float = 1.0, label_weight: float = 1.0,
                        teacher_weight: float = 1.0
                        ) -> tuple[jax.Array, jax.Array]:
  """Splits the gradient of `distillation_loss(name, ...)` as Eq. 7 does.

  Returns (rest, dark), which sum to the gradient of the loss with respect
  to the student logits (the same arguments as `distillation_loss`):

  * "kd": teacher_weight times the parts of `dark_knowledge_split` at
    `temperature`: rest is the true-label entries, dark all others.
  * "kd+label": dark is teacher_weight times the KD term's dark part; rest
    is everything else, the label cross-entropy's gradient
    label_weight * (q - y) / b (no teacher in it, so no dark knowledge,
    although it has off-label entries) plus the KD term's true-label part.
    Here the two parts overlap at off-label entries.

  Other losses have no dark-knowledge term to split off (see the module
  docstring), so they raise.

  Returns:
    (rest, dark), two (b, n) float32 arrays.

  Raises:
    ValueError: for a name not in DARK_KNOWLEDGE_LOSSES.
  """
  if name not in DARK_KNOWLEDGE_LOSSES:
    raise ValueError(
        f"Loss {name!r} has no Eq. 7 dark-knowledge term; losses with one: "
        f"{DARK_KNOWLEDGE_LOSSES}.")
  true_part, dark_part = dark_knowledge_split(
      student_logits, teacher_logits, labels, temperature=temperature)
  rest, dark = teacher_weight * true_part, teacher_weight * dark_part
  if name == "kd+label":
    student_probs = jax.nn.softmax(_f32(student_logits), axis=-1)
    one_hot = jax.nn.one_hot(labels, student_probs.shape[-1])
    rest += label_weight * (student_probs - one_hot) / student_probs.shape[0]
  return rest, dark


def loss_dark_knowledge_share(name: str, student_logits: jax.Array,
                              teacher_logits: jax.Array, labels: jax.Array,
                              **kwargs) -> jax.Array:
  """Dark-knowledge share of the gradient of the loss actually used.

  ||dark||^2 / (||rest||^2 + ||dark||^2) with the parts of
  `loss_gradient_split` (same arguments; kwargs: temperature, label_weight,
  teacher_weight), in [0, 1]; 0 where the gradient is zero. For "kd" the
  parts are disjoint, so the denominator is the whole gradient's squared
  norm, and at T = 1 this equals `dark_knowledge_share`. For "kd+label" the
  parts overlap at off-label entries, where the label term pushes the
  student's probabilities down and the dark part moves them toward the
  teacher's; the denominator is the sum of the parts' squared norms, which
  keeps the share in [0, 1] (the squared norm of their sum may be smaller
  than that of the dark part alone).
  """
  return _share(*loss_gradient_split(name, student_logits, teacher_logits,
                                     labels, **kwargs))


def kl_divergence(teacher_logits: jax.Array,
                  student_logits: jax.Array) -> jax.Array:
  """Mean over the batch of KL(p_teacher || q_student), in nats.

  Computed from log-softmaxes, so classes where the teacher's probability
  underflows to 0 contribute exactly 0. Meant as a metric; neither argument
  is stopped from differentiating.
  """
  log_p = jax.nn.log_softmax(_f32(teacher_logits), axis=-1)
  log_q = jax.nn.log_softmax(_f32(student_logits), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def agreement(teacher_logits: jax.Array,
              student_logits: jax.Array) -> jax.Array:
  """Fraction of samples on which teacher and student have the same argmax."""
  same = (jnp.argmax(teacher_logits, axis=-1)
          == jnp.argmax(student_logits, axis=-1))
  return jnp.mean(same.astype(jnp.float32))


def distillation_loss(name: str, student_logits: jax.Array,
                      teacher_logits: jax.Array | None, labels: jax.Array,
                      rng: jax.Array | None, *, temperature: float = 1.0,
                      label_weight: float = 1.0, teacher_weight: float = 1.0,
                      dkpp_keep_argmax: bool = False,
                      example_ids: jax.Array | None = None) -> jax.Array:
  """The training loss of a generation, chosen by name.

  `name` is a Python string, so the choice is made at trace time.

  * "ce": `cross_entropy` on the labels; the teacher is ignored (generation
    0, or a baseline). No weight is applied.
  * "kd": teacher_weight * `kd_loss` at `temperature` (BAN).
  * "kd+label": label_weight * `cross_entropy` + teacher_weight * `kd_loss`
    at `temperature` (BAN+L).
  * "cwtm": `cwtm_loss` (Eq. 10); no temperature, no weight.
  * "dkpp": `dkpp_loss` with `rng` and `example_ids` (Eq. 11); no
    temperature, no weight.

  Args:
    name: one of DISTILL_LOSSES.
    student_logits: (b, n) student logits.
    teacher_logits: (b, n) teacher logits, or None for "ce".
    labels: (b,) integer labels.
    rng: a PRNG key; only "dkpp" uses it.
    temperature: KD temperature T, for "kd" and "kd+label".
    label_weight: weight of the label term of "kd+label".
    teacher_weight: weight of the teacher term of "kd" and "kd+label".
    dkpp_keep_argmax: passed to `dkpp_loss` as keep_argmax.
    example_ids: passed to `dkpp_loss`: (b,) ids of the rows' examples for
      one permutation per example, or None for one drawn from `rng`.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: for an unknown name, a missing teacher or a missing rng.
  """
  if name not in DISTILL_LOSSES:
    raise ValueError(
        f"Unknown distillation loss {name!r}; valid names: {DISTILL_LOSSES}.")
  if name == "ce":
    return cross_entropy(student_logits, labels)
  if teacher_logits is None:
    raise ValueError(f"Distillation loss {name!r} needs teacher logits.")
  if name == "kd":
    return teacher_weight * kd_loss(student_logits, teacher_logits,
                                    temperature=temperature)
  if name == "kd+label":
    return (label_weight * cross_entropy(student_logits, labels)
            + teacher_weight * kd_loss(student_logits, teacher_logits,
                                       temperature=temperature))
  if name == "cwtm":
    return cwtm_loss(student_logits, teacher_logits, labels)
  # name == "dkpp"
  if rng is None:
    raise ValueError("Distillation loss 'dkpp' needs an rng key.")
  return dkpp_loss(rng, student_logits, teacher_logits, labels,
                   keep_argmax=dkpp_keep_argmax, example_ids=example_ids)
