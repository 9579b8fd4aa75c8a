"""Losses on logits: pure, jit-able functions, averaged over the batch.

Every loss here is a mean over the batch of a per-sample sum over classes
(never a mean over batch x classes), so that its gradient with respect to
the student's logits is (q - p) / b, the paper's Eq. 5 divided by the batch.
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the batch of -log softmax(logits)[label]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return -jnp.mean(picked)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_i target_i * log softmax(logits)_i."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target_probs * log_probs, axis=-1))


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
            temperature: float = 1.0) -> jax.Array:
  """Cross-entropy from the student's to the teacher's softmax (BAN's loss).

  With a temperature T both softmaxes are taken at T and the loss is scaled
  by T^2 (Hinton et al., 2015), so that its gradient keeps the magnitude of
  the T = 1 loss. The paper uses T = 1, where the scale is 1. The teacher's
  logits carry no gradient.
  """
  teacher_probs = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature,
      axis=-1)
  loss = soft_cross_entropy(student_logits / temperature, teacher_probs)
  return loss * temperature**2
