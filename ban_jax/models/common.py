"""Pieces shared by the model families: dtypes, initialisers, norm and conv.

Every model computes in `dtype` (bfloat16 on GPU/TPU, float32 on CPU unless
asked otherwise) while its parameters and batch-norm statistics stay float32,
and returns float32 logits so that losses never run in half precision. The
classifier (global pool and final linear layer) computes in float32 whatever
`dtype` is: bfloat16 keeps 8 significant bits, so a logit near 10 would be
off by up to 1/32 and every probability computed from it by up to 3%,
the teacher's small ones (the dark knowledge) included.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

# He-normal over fan-out, the initialiser of the Wide-ResNet and DenseNet
# reference code (torch's kaiming_normal_(mode='fan_out')).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def resolve_dtype(dtype: Any) -> Any:
  """Maps 'auto' to bfloat16 on accelerators and float32 on CPU."""
  if dtype in (None, "auto"):
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  if isinstance(dtype, str):
    try:
      return {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
              "float16": jnp.float16}[dtype]
    except KeyError:
      raise ValueError(
          f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or "
          "'float16'.") from None
  return dtype


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.Module:
  # momentum 0.9 here is torch's momentum=0.1; statistics are kept in float32.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def conv(features: int, kernel: int, dtype: Any, stride: int = 1,
         name: str | None = None) -> nn.Module:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=kernel // 2, use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


def classifier(num_classes: int, dtype: Any) -> nn.Module:
  return nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32,
                  name="classifier")


def global_pool_logits(x: jax.Array, num_classes: int, dtype: Any,
                       float32_classifier: bool = True) -> jax.Array:
  """Global average pool + the final linear layer, logits in float32.

  Args:
    x: (b, h, w, c) final features, in the compute dtype.
    num_classes: the classifier's outputs.
    dtype: the model's compute dtype.
    float32_classifier: pool and multiply in float32 (operands and result),
      whatever `dtype`; False computes both in `dtype` and casts the logits
      up afterwards (only to measure what float32 costs: `python -m
      ban_jax.bench --bf16_classifier`).

  Returns:
    (b, num_classes) float32 logits.
  """
  if float32_classifier:
    # Cast before pooling, so the mean is not rounded to `dtype` either. The
    # pool and a (c, num_classes) matmul are a sliver of the network's work.
    x, dtype = x.astype(jnp.float32), jnp.float32
  x = jnp.mean(x, axis=(1, 2))
  return classifier(num_classes, dtype)(x).astype(jnp.float32)


def residual_stages(module: nn.Module, x: jax.Array, stage_sizes, widths,
                    make_block: Callable[[int, int, str], nn.Module],
                    train: bool) -> jax.Array:
  """The stage loop shared by the residual families.

  Stage k has `stage_sizes[k]` blocks of `widths[k]` channels; the first
  block of every stage after the first halves the resolution. Each stage's
  input and output are sown into 'intermediates' as `stage{k}_in` /
  `stage{k}_out` (the feature-level losses read them). `make_block(features,
  stride, name)` builds one block; call from inside `module`'s compact
  `__call__`.
  """
  for stage, (blocks, features) in enumerate(zip(stage_sizes, widths)):
    module.sow("intermediates", f"stage{stage}_in", x)
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      x = make_block(features, stride, f"stage{stage}_block{block}")(x, train)
    module.sow("intermediates", f"stage{stage}_out", x)
  return x

