"""Wide Residual Networks (Zagoruyko & Komodakis, 2016), the CIFAR variant.

WRN-d-k: a 3x3 stem with 16 channels, three stages of (d-4)/6 pre-activation
basic blocks with 16k, 32k and 64k channels (strides 1, 2, 2), dropout
between the two convolutions of a block, then BN-ReLU, global pooling and a
linear classifier. Stage inputs and outputs are sown into the
'intermediates' collection for feature-level losses; they cost nothing
unless that collection is requested as mutable.
"""

from typing import Any

import jax
from flax import linen as nn

from ban_jax.models import common


class WideBasicBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3."""
  features: int
  stride: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    preact = nn.relu(common.batch_norm(train, self.dtype)(x))
    y = common.conv(self.features, 3, self.dtype, self.stride)(preact)
    y = nn.relu(common.batch_norm(train, self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = common.conv(self.features, 3, self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      # The projection sees the pre-activation, as in the reference code.
      x = common.conv(self.features, 1, self.dtype, self.stride,
                      name="shortcut")(preact)
    return x + y


class WideResNet(nn.Module):
  """WRN-depth-width for small (CIFAR-sized or smaller) images."""
  depth: int
  width: int
  num_classes: int
  dropout_rate: float = 0.0
  dtype: Any = "auto"
  # False: the classifier computes in `dtype` (see common.global_pool_logits).
  float32_classifier: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n+4, got {self.depth}.")
    dtype = common.resolve_dtype(self.dtype)
    blocks_per_stage = (self.depth - 4) // 6
    x = common.conv(16, 3, dtype, name="stem")(x.astype(dtype))
    x = common.residual_stages(
        self, x, (blocks_per_stage,) * 3,
        (16 * self.width, 32 * self.width, 64 * self.width),
        lambda features, stride, name: WideBasicBlock(
            features, stride, self.dropout_rate, dtype, name=name), train)
    x = nn.relu(common.batch_norm(train, dtype, name="final_norm")(x))
    return common.global_pool_logits(x, self.num_classes, dtype,
                                     self.float32_classifier)
