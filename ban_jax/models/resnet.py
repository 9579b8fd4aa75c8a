"""Residual networks: CIFAR ResNets, pre-activation ResNets, ResNet-18, and
residual students shaped like a DenseNet for the paper's Table 5.

`ResNet` is the original post-activation network (He et al., 2016a):
conv-BN-ReLU-conv-BN, the shortcut added, then ReLU.
  * `resnet{6n+2}` (resnet20, resnet56, resnet110): the CIFAR network of that
    paper, a 3x3 stem with 16 channels and three stages of n basic blocks
    with 16, 32 and 64 channels. Where a stage changes shape the shortcut is
    the paper's CIFAR option A by default: subsample by 2 and zero-pad the
    new channels, parameter-free, so resnet20/56/110 have the published
    0.27M/0.85M/1.7M parameters. `shortcut='projection'` uses option B, a
    strided 1x1 conv followed by BN, instead.
  * `resnet18` and `resnet34`: the ImageNet stage layout (64/128/256/512
    channels, 2-2-2-2 or 3-4-6-3 blocks) with the CIFAR stem common in
    distillation code, a 3x3 stride-1 conv with 64 channels, BN and ReLU, no
    max-pool; option B shortcuts. resnet18 is the PyTorch peer benchmark's
    ResNet18 layer for layer (11.22M parameters for 100 classes).

`PreActResNet` is the pre-activation network (He et al., 2016b):
BN-ReLU-conv-BN-ReLU-conv with the identity added, a final BN-ReLU before
pooling; where a block changes shape its shortcut is a strided 1x1 conv of
the pre-activated input.
  * `preresnet{depth}`: the CIFAR network of that paper, 3x3 stem with 16
    channels, three stages. Basic blocks (16/32/64 channels, (depth-2)/6
    per stage: preresnet20, 56, 110) below depth 164, bottleneck blocks
    from 164 on (1x1 to a quarter of the width, 3x3, 1x1 back; 64/128/256
    channels, (depth-2)/9 per stage: preresnet164, 1001), the paper's split;
    `bottleneck=True/False` overrides it.

Table 5 students. The paper trains residual students of a DenseNet-90-60
teacher, shaped to match the teacher's output at each dense block and
sharing (copied, then frozen) the teacher's first conv and final linear
layer; it calls them Wide-ResNet-1-1, Wide-ResNet-4-0.5, Pre-ResNet-14-0.5,
Pre-ResNet-14-1 (and Wide-ResNet-2-1, Wide-ResNet-4-1), gives "the number
of units per block ... followed by the ratio of input and output channels
with respect to a DenseNet-90-60 block" and their sizes, and says no more.
Our reading, registered as
  * `densewrn{blocks}_{ratio}`    = Wide-ResNet-blocks-ratio (basic
    pre-activation blocks, the WRN block), e.g. densewrn1_1, densewrn4_0.5;
  * `densepreresnet{blocks}_{ratio}` = Pre-ResNet-blocks-ratio (bottleneck
    pre-activation blocks, the Pre-ResNet-164 block), e.g.
    densepreresnet14_0.5, densepreresnet14_1:
`blocks` residual blocks per stage (14 is the DenseNet-90-60's number of
dense layers per block), three stages at the spatial sizes of the dense
blocks (strides 1, 2, 2) whose output widths are `ratio` times the widths
the dense blocks hand on after compression (0.5 x 960, 1320, 1500 = 480,
660, 750 for DenseNet-90-60), rounded to integers; bottleneck blocks work
at a quarter of that width, rounded down. This reading gives the paper's
sizes of Wide-ResNet-1-1, 2-1 and 4-1 to 1% (21.0M, 43.2M, 87.4M for 20.9M,
43.1M, 87.3M) and 22.4M for Wide-ResNet-4-0.5's 24.3M; reading the ratio
against the uncompressed widths would make them about 4 times larger. The
Pre-ResNet sizes (7.3M and 17.7M; ours 5.5M and 20.4M) fit no single width
rule, so those two stay a best guess.
The stem is the teacher's: a 3x3 conv to 2*growth = 120 channels. The
classifier is the teacher's: a linear layer from the teacher's final
width (1500); when the last stage is narrower (ratio < 1), a 1x1 conv named
`head` maps it to that width before the final BN-ReLU and pooling. Other
teachers: `dense_depth` and `dense_growth` (and `dense_compression`) kwargs.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ban_jax.models import common
from ban_jax.models import densenet
from ban_jax.models import wrn


class BasicBlock(nn.Module):
  """Post-activation block: conv3x3-BN-ReLU-(dropout)-conv3x3-BN, add, ReLU."""
  features: int
  stride: int
  shortcut: str  # 'pad' (option A) or 'projection' (option B)
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = common.conv(self.features, 3, self.dtype, self.stride)(x)
    y = nn.relu(common.batch_norm(train, self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = common.conv(self.features, 3, self.dtype)(y)
    y = common.batch_norm(train, self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      if self.shortcut == "pad":
        x = x[:, ::self.stride, ::self.stride, :]
        extra = self.features - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0),
                        (extra // 2, extra - extra // 2)))
      elif self.shortcut == "projection":
        x = common.conv(self.features, 1, self.dtype, self.stride,
                        name="shortcut")(x)
        x = common.batch_norm(train, self.dtype, name="shortcut_norm")(x)
      else:
        raise ValueError(f"Unknown shortcut {self.shortcut!r}: use 'pad' or "
                         "'projection'.")
    return nn.relu(x + y)


class PreActBottleneck(nn.Module):
  """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv1x1, add."""
  features: int
  stride: int
  dropout_rate: float
  dtype: Any
  bottleneck_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    inner = self.features // self.bottleneck_ratio
    preact = nn.relu(common.batch_norm(train, self.dtype)(x))
    y = common.conv(inner, 1, self.dtype)(preact)
    y = nn.relu(common.batch_norm(train, self.dtype)(y))
    y = common.conv(inner, 3, self.dtype, self.stride)(y)
    y = nn.relu(common.batch_norm(train, self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = common.conv(self.features, 1, self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = common.conv(self.features, 1, self.dtype, self.stride,
                      name="shortcut")(preact)
    return x + y


def _check_stages(stage_sizes: Sequence[int], widths: Sequence[int]) -> None:
  if len(stage_sizes) != len(widths) or min(stage_sizes, default=0) < 1:
    raise ValueError(f"Need one width per stage and at least one block per "
                     f"stage, got stage_sizes={tuple(stage_sizes)}, "
                     f"widths={tuple(widths)}.")


class ResNet(nn.Module):
  """Post-activation ResNet; the first stage keeps the stem's resolution."""
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int
  stem_features: int = 16
  shortcut: str = "pad"
  dropout_rate: float = 0.0
  dtype: Any = "auto"
  # False: the classifier computes in `dtype` (see common.global_pool_logits).
  float32_classifier: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_stages(self.stage_sizes, self.widths)
    dtype = common.resolve_dtype(self.dtype)
    x = common.conv(self.stem_features, 3, dtype, name="stem")(x.astype(dtype))
    x = nn.relu(common.batch_norm(train, dtype, name="stem_norm")(x))
    x = common.residual_stages(
        self, x, self.stage_sizes, self.widths,
        lambda features, stride, name: BasicBlock(
            features, stride, self.shortcut, self.dropout_rate, dtype,
            name=name), train)
    return common.global_pool_logits(x, self.num_classes, dtype,
                                     self.float32_classifier)


class PreActResNet(nn.Module):
  """Pre-activation ResNet with basic (WRN) or bottleneck blocks.

  `head_features`, when set and different from the last stage's width, adds
  a 1x1 conv (`head`) before the final norm, so that the classifier can
  have another network's input width (the Table 5 students).
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int
  stem_features: int = 16
  bottleneck: bool = False
  head_features: int | None = None
  dropout_rate: float = 0.0
  dtype: Any = "auto"
  # False: the classifier computes in `dtype` (see common.global_pool_logits).
  float32_classifier: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_stages(self.stage_sizes, self.widths)
    dtype = common.resolve_dtype(self.dtype)
    x = common.conv(self.stem_features, 3, dtype, name="stem")(x.astype(dtype))
    block_type = PreActBottleneck if self.bottleneck else wrn.WideBasicBlock
    x = common.residual_stages(
        self, x, self.stage_sizes, self.widths,
        lambda features, stride, name: block_type(
            features, stride, self.dropout_rate, dtype, name=name), train)
    if self.head_features and self.head_features != x.shape[-1]:
      # Pre-activated like the blocks, so the conv sees a normalised input.
      x = nn.relu(common.batch_norm(train, dtype, name="head_norm")(x))
      x = common.conv(self.head_features, 1, dtype, name="head")(x)
    x = nn.relu(common.batch_norm(train, dtype, name="final_norm")(x))
    return common.global_pool_logits(x, self.num_classes, dtype,
                                     self.float32_classifier)


def cifar_resnet(depth: int, num_classes: int, **kwargs) -> ResNet:
  """resnet{depth}: 18/34 with the CIFAR stem, or He et al.'s 6n+2 nets."""
  if depth in (18, 34):
    # kwargs may override the widths, which tests use to shrink the network.
    return ResNet(stage_sizes=(2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3),
                  num_classes=num_classes,
                  **{"widths": (64, 128, 256, 512), "stem_features": 64,
                     "shortcut": "projection", **kwargs})
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(
        f"ResNet depth must be 18, 34 or 6n+2 (20, 32, 44, 56, 110), "
        f"got {depth}.")
  n = (depth - 2) // 6
  return ResNet(stage_sizes=(n, n, n), widths=(16, 32, 64),
                num_classes=num_classes, **kwargs)


def preact_resnet(depth: int, num_classes: int,
                  bottleneck: bool | None = None, **kwargs) -> PreActResNet:
  """preresnet{depth}: basic blocks below depth 164, bottlenecks from it."""
  if bottleneck is None:
    bottleneck = depth >= 164
  per_block, widths = (9, (64, 128, 256)) if bottleneck else (6, (16, 32, 64))
  if depth < per_block + 2 or (depth - 2) % per_block:
    kind = "bottleneck" if bottleneck else "basic"
    raise ValueError(f"Pre-ResNet depth with {kind} blocks must be "
                     f"{per_block}n+2, got {depth}.")
  n = (depth - 2) // per_block
  return PreActResNet(stage_sizes=(n, n, n), widths=widths,
                      num_classes=num_classes, bottleneck=bottleneck, **kwargs)


def densenet_shaped(blocks: int, ratio: float, num_classes: int, *,
                    bottleneck: bool, dense_depth: int = 90,
                    dense_growth: int = 60, dense_compression: float = 0.5,
                    **kwargs) -> PreActResNet:
  """A Table 5 student shaped like DenseNet-BC-dense_depth-dense_growth."""
  if blocks < 1 or ratio <= 0:
    raise ValueError(f"Need at least one block per stage and a positive "
                     f"width ratio, got {blocks} and {ratio}.")
  outputs, stem = densenet.stage_widths(dense_depth, dense_growth,
                                        dense_compression)
  widths = tuple(max(1, round(ratio * dense_compression * w))
                 for w in outputs)
  return PreActResNet(stage_sizes=(blocks,) * len(widths), widths=widths,
                      num_classes=num_classes, stem_features=stem,
                      bottleneck=bottleneck, head_features=outputs[-1],
                      **kwargs)
