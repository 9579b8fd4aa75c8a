"""DenseNet-BC (Huang et al., 2017), the CIFAR variant the paper distils.

DenseNet-BC-depth-growth: a 3x3 stem with 2*growth channels; three dense
blocks of (depth-4)//6 bottleneck layers (rounded down, see
`layers_per_block`), each layer BN-ReLU-conv1x1 to bottleneck_width*growth
channels, BN-ReLU-(dropout)-conv3x3 to growth channels, its output
concatenated to its input; between blocks a transition, BN-ReLU-conv1x1 to
`compression` times the channels and 2x2 average pooling; then BN-ReLU,
global pooling and a linear classifier. This is the layout of the DenseNet
authors' code and of the PyTorch peer benchmark (densenet100_12 has that
model's 800,032 parameters for 100 classes).

Parameter counts: the paper's Table 1 (CIFAR-10) gives DenseNet-112-33,
90-60, 80-80 and 80-120 6.3M, 16.1M, 22.4M and 50.4M; this definition gives
6.89M, 15.05M, 20.95M and 47.05M for 10 classes (6.99M, 15.19M, 21.10M,
47.28M for 100), within 10% of the paper's numbers, which disagree with
each other by more than that elsewhere in the paper.

Memory: every layer reads the concatenation of all earlier outputs of its
block, so a plain implementation keeps a quadratic amount of activations for
the backward pass. Layers here take the list of earlier outputs and
concatenate inside themselves; with `memory_efficient=True` the
concatenation, first norm and 1x1 conv of each layer are rematerialised in
the backward pass (Pleiss et al., 2017), so that only the layers' own
outputs are kept (linear memory) at the price of computing them twice. Off
by default, since it costs time; turn it on when the large DenseNets do not
fit at the batch size wanted.

Dense block inputs and outputs (the latter before the transition) are sown
into 'intermediates' as `stage{k}_in` / `stage{k}_out`.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ban_jax.models import common


def layers_per_block(depth: int) -> int:
  # Each bottleneck layer holds two convs; the stem, two transitions and the
  # classifier make the other four layers of the depth. The paper's 90 and
  # 80 are not of the form 6n+4: like the PyTorch DenseNet code of its time
  # (densenet.pytorch, (depth-4)//3 layers halved for bottlenecks) we round
  # down, so DenseNet-90-60 has 14 layers per block and 80-80 has 12.
  n = (depth - 4) // 6
  if n < 1:
    raise ValueError(f"DenseNet-BC depth must be at least 10, got {depth}.")
  return n


def stage_widths(depth: int, growth: int,
                 compression: float = 0.5) -> tuple[tuple[int, ...], int]:
  """Channels at each dense block's output, and the stem's channels.

  The last entry is the classifier's input width. Residual students shaped
  like a DenseNet (see resnet.py) are built from these numbers.
  """
  n = layers_per_block(depth)
  channels = stem = 2 * growth
  outputs = []
  for block in range(3):
    channels += n * growth
    outputs.append(channels)
    if block < 2:
      channels = int(channels * compression)
  return tuple(outputs), stem


class _ConcatNormConv(nn.Module):
  """Concatenation, BN-ReLU and the 1x1 bottleneck conv of a dense layer."""
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool) -> jax.Array:
    x = jnp.concatenate(inputs, axis=-1) if len(inputs) > 1 else inputs[0]
    y = nn.relu(common.batch_norm(train, self.dtype, name="norm")(x))
    return common.conv(self.features, 1, self.dtype, name="conv")(y)


class DenseLayer(nn.Module):
  """Bottleneck layer: BN-ReLU-conv1x1-BN-ReLU-(dropout)-conv3x3.

  Takes the block's earlier outputs as a list and returns only its own
  `growth` new channels; the caller appends them to the list. The parameter
  tree is the same with and without `memory_efficient`, so checkpoints move
  freely between the two.
  """
  growth: int
  bottleneck_width: int
  dropout_rate: float
  memory_efficient: bool
  dtype: Any

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
    head_cls = _ConcatNormConv
    if self.memory_efficient:
      # static_argnums counts `self`: argument 2 is `train`, a Python bool.
      head_cls = nn.remat(_ConcatNormConv, static_argnums=(2,))
    # Dropout after each conv, as in Huang et al.'s reference code.
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = head_cls(self.bottleneck_width * self.growth, self.dtype,
                 name="bottleneck")(tuple(features), train)
    y = nn.relu(common.batch_norm(train, self.dtype, name="norm")(dropout(y)))
    return dropout(common.conv(self.growth, 3, self.dtype, name="conv")(y))


class DenseNet(nn.Module):
  """DenseNet-BC-depth-growth for CIFAR-sized images."""
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
    n = layers_per_block(self.depth)
    x = common.conv(2 * self.growth, 3, dtype, name="stem")(x.astype(dtype))
    for block in range(3):
      self.sow("intermediates", f"stage{block}_in", x)
      features = [x]
      for i in range(n):
        features.append(DenseLayer(
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
