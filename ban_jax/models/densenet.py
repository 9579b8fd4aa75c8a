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
fit at the batch size wanted. (One preallocated block buffer written in
place by each layer does not help under XLA: the backward pass reads every
layer's version of it, so XLA copies the whole buffer at each layer; on the
CPU that took as long and 15% more memory than the concatenations, which
XLA mostly fuses into the norms reading them. See docs/performance.md.)

Compile time: each layer reads a different width, so each is code of its
own, and the train step of DenseNet-BC-100-12 (48 layers, teacher and
student) compiles slowly: 76 s on an H200. With `layers_per_scan=k` the
layers of a block run in groups of at most k, each group one `lax.scan`
whose steps read the group's widest input, the channels not yet written
being zeros that zero-padded parameters ignore (`_scanned_layers`); a group
compiles once. Parameters, their names and initial values, the batch
statistics and the function computed stay those of the unrolled network
(tests/test_densenet.py); the padding costs multiply-adds, for
densenet100_12 +2%, +6%, +15% and +32% at k = 2, 4, 8 and 16. The default
is 1, every layer unrolled: on the CPU, XLA runs convolutions inside a loop
as generated loops instead of its convolution library (jax-ml/jax#12868),
which made a DenseNet-BC-100-12 step 4-5 times slower; on a GPU the trade
has not been measured.

Dense block inputs and outputs (the latter before the transition) are sown
into 'intermediates' as `stage{k}_in` / `stage{k}_out`.
"""

import functools
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


def _group_sizes(num_layers: int, layers_per_scan: int) -> list[int]:
  """Splits a block's layers into as few, as even, scanned groups as allowed.

  Every group has its own input width and so its own compiled loop body;
  even sizes keep the zero padding of the widest group small.
  """
  groups = -(-num_layers // max(1, layers_per_scan))
  size, extra = divmod(num_layers, groups)
  return [size + 1] * extra + [size] * (groups - extra)


def _pad_head(tree: Any, extra: int) -> Any:
  """Pads a DenseLayer's variables to `extra` more input channels.

  The bottleneck's norm gets scale, bias and mean 0 and variance 1 on the
  padding, its 1x1 kernel zero rows, so padded channels, whatever they hold,
  add nothing to the layer's output; everything else is left alone.
  """
  def pad(path, leaf):
    names = [p.key for p in path]
    if names[0] != "bottleneck":
      return leaf
    widths = [(0, 0)] * leaf.ndim
    widths[2 if names[-1] == "kernel" else 0] = (0, extra)
    return jnp.pad(leaf, widths, constant_values=1 if names[-1] == "var" else 0)
  return jax.tree_util.tree_map_with_path(pad, tree)


def _scanned_layers(module: nn.Module, pieces: list[jax.Array], names,
                    train: bool, dtype: Any) -> jax.Array:
  """Runs the DenseLayers `names` in one `lax.scan`; returns their outputs.

  The layers read widths `width`, `width + growth`, ... (`width` the
  channels in `pieces`), so they cannot share one set of parameter shapes:
  each layer's variables keep the paper's shapes in the model (checkpoints
  and parameter counts are those of an unrolled DenseNet) and are padded
  here to the group's widest layer. The loop carries a buffer of the
  group's `len(names) * growth` new channels, zero until written, and each
  step reads it with the block's earlier pieces. Call from inside
  `module`'s compact `__call__`.
  """
  growth, count = module.growth, len(names)
  width = sum(p.shape[-1] for p in pieces)
  make = functools.partial(
      DenseLayer, module.growth, module.bottleneck_width, module.dropout_rate,
      module.memory_efficient, dtype)
  if module.is_initializing():
    # The variables are those of the unrolled layers, made by the same
    # modules; a 1x1 image fixes their shapes at little compile cost.
    for t, name in enumerate(names):
      make(name=name)(jnp.zeros((1, 1, 1, width + t * growth), dtype), False)
  variables = [
      {col: _pad_head(module.variables[col][name], (count - 1 - t) * growth)
       for col in ("params", "batch_stats")}
      for t, name in enumerate(names)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *variables)
  keys = None
  if train and module.dropout_rate > 0:
    keys = jax.random.split(module.make_rng("dropout"), count)
  # Unbound: applied functionally inside the loop to each step's variables.
  layer = make(parent=None)

  def step(buffer, xs):
    layer_variables, key, t = xs
    # The last layer's output is read by no layer of the group.
    own = (buffer[..., :(count - 1) * growth],)
    # The pieces go in separately, so that with memory_efficient the
    # rematerialised head keeps them once for the whole loop, not per step.
    y, state = layer.apply(
        layer_variables, (*pieces, *own), train, mutable=["batch_stats"],
        rngs={} if key is None else {"dropout": key})
    buffer = jax.lax.dynamic_update_slice_in_dim(
        buffer, y.astype(buffer.dtype), t * growth, axis=3)
    return buffer, state["batch_stats"]

  buffer = jnp.zeros((*pieces[0].shape[:-1], count * growth), dtype)
  buffer, stats = jax.lax.scan(step, buffer,
                               (stacked, keys, jnp.arange(count)))
  if train and not module.is_initializing():
    # nn.BatchNorm leaves the statistics alone at initialisation; so do we.
    for t, name in enumerate(names):
      new = jax.tree_util.tree_map_with_path(
          lambda path, leaf, t=t: leaf[t, :width + t * growth]
          if path[0].key == "bottleneck" else leaf[t], stats)
      module.put_variable("batch_stats", name, new)
  return buffer


class DenseNet(nn.Module):
  """DenseNet-BC-depth-growth for CIFAR-sized images.

  `layers_per_scan` > 1 scans each block's layers in groups of at most that
  many (fewer programs to compile, some padded work; see the module
  docstring); any value gives the same variables and, within float
  rounding, the same outputs.
  """
  depth: int
  growth: int
  num_classes: int
  compression: float = 0.5
  bottleneck_width: int = 4
  dropout_rate: float = 0.0
  memory_efficient: bool = False
  dtype: Any = "auto"
  layers_per_scan: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dtype = common.resolve_dtype(self.dtype)
    n = layers_per_block(self.depth)
    x = common.conv(2 * self.growth, 3, dtype, name="stem")(x.astype(dtype))
    for block in range(3):
      self.sow("intermediates", f"stage{block}_in", x)
      features, first = [x], 0
      for size in _group_sizes(n, self.layers_per_scan):
        names = [f"block{block}_layer{i}" for i in range(first, first + size)]
        if size == 1:
          features.append(DenseLayer(
              self.growth, self.bottleneck_width, self.dropout_rate,
              self.memory_efficient, dtype, name=names[0])(features, train))
        else:
          features.append(_scanned_layers(self, features, names, train, dtype))
        first += size
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
