"""Model registry: every network is chosen by name from the config.

Names are patterns with numbers in them (`wrn28_10` is WRN-28-10). Each family
registers a regular expression and a builder; `get_model` finds the one that
matches or fails with the list of valid names. Families: Wide-ResNets
(wrn.py), DenseNet-BC (densenet.py), CIFAR ResNets, ResNet-18/34,
pre-activation ResNets and the paper's Table 5 students shaped like a
DenseNet (resnet.py). `python -m ban_jax.models` lists the examples with
their parameter and multiply-accumulate counts (cost.py).

Conventions every registered model follows, which the pipeline relies on:
  * `module.apply(variables, images, train=...)` returns float32 logits,
    computed by a float32 classifier (`common.global_pool_logits`; the
    residual families take `float32_classifier=False` to compare costs);
  * the first convolution is named `stem` and the final linear layer
    `classifier` (the cross-architecture option copies and freezes those);
  * stage inputs/outputs are sown into the 'intermediates' collection.
"""

import dataclasses
import re
from typing import Callable

from flax import linen as nn

from ban_jax.models import densenet
from ban_jax.models import resnet
from ban_jax.models import wrn


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  pattern: str  # Regular expression over the whole name.
  builder: Callable[..., nn.Module]  # (match, num_classes, **kwargs) -> module
  examples: tuple[str, ...]  # Names listed in errors and by `python -m`.
  description: str


_FAMILIES: list[ModelFamily] = []


def register(family: ModelFamily) -> None:
  _FAMILIES.append(family)


def families() -> tuple[ModelFamily, ...]:
  return tuple(_FAMILIES)


def registered_names() -> tuple[str, ...]:
  """Every example name, the list printed by `python -m ban_jax.models`."""
  return tuple(name for f in _FAMILIES for name in f.examples)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds the Linen module called `name` with `num_classes` outputs."""
  for family in _FAMILIES:
    match = re.fullmatch(family.pattern, name)
    if match:
      return family.builder(match, num_classes, **kwargs)
  valid = "\n".join(f"  {f.description}: e.g. {', '.join(f.examples)}"
                    for f in _FAMILIES)
  raise ValueError(f"Unknown model {name!r}. Valid model names:\n{valid}")


def _wrn(m: re.Match, num_classes: int, **kwargs) -> nn.Module:
  # WideResNet checks its depth when called; checking here as well lets
  # config validation, which only builds the model, catch a bad depth.
  if (int(m[1]) - 4) % 6:
    raise ValueError(f"WRN depth must be 6n+4, got {m[1]}.")
  return wrn.WideResNet(depth=int(m[1]), width=int(m[2]),
                        num_classes=num_classes, **kwargs)


register(ModelFamily(
    pattern=r"wrn(\d+)_(\d+)",
    builder=_wrn,
    examples=("wrn10_2", "wrn16_4", "wrn16_8", "wrn28_1", "wrn28_2",
              "wrn28_5", "wrn28_10", "wrn40_4"),
    description="Wide-ResNet wrn{depth}_{width}, depth = 6n+4"))


def _densenet(m: re.Match, num_classes: int, **kwargs) -> nn.Module:
  # Checks the depth now, as `_wrn` does.
  densenet.layers_per_block(int(m[1]))
  # DenseNet always has the float32 classifier (common.global_pool_logits's
  # default); it has no field to turn it off (densenet.py is being rewritten).
  if not kwargs.pop("float32_classifier", True):
    raise ValueError("DenseNet has no float32_classifier=False option; its "
                     "classifier always computes in float32.")
  return densenet.DenseNet(depth=int(m[1]), growth=int(m[2]),
                           num_classes=num_classes, **kwargs)


register(ModelFamily(
    pattern=r"densenet(\d+)_(\d+)",
    builder=_densenet,
    examples=("densenet100_12", "densenet112_33", "densenet90_60",
              "densenet80_80", "densenet80_120", "densenet190_40"),
    description="DenseNet-BC densenet{depth}_{growth}, (depth-4)//6 layers "
                "per block"))

register(ModelFamily(
    pattern=r"resnet(\d+)",
    builder=lambda m, num_classes, **kw: resnet.cifar_resnet(
        int(m[1]), num_classes, **kw),
    examples=("resnet20", "resnet56", "resnet110", "resnet18", "resnet34"),
    description="ResNet resnet{depth}, depth = 6n+2 (CIFAR, He et al.) or "
                "18/34 (CIFAR stem)"))

register(ModelFamily(
    pattern=r"preresnet(\d+)",
    builder=lambda m, num_classes, **kw: resnet.preact_resnet(
        int(m[1]), num_classes, **kw),
    examples=("preresnet20", "preresnet56", "preresnet110", "preresnet164"),
    description="Pre-activation ResNet preresnet{depth}, depth = 6n+2 "
                "(basic) or 9n+2 >= 164 (bottleneck)"))

# Table 5's students of a DenseNet-90-60 teacher; see resnet.py for the
# reading of the paper's "Wide-ResNet-4-0.5" and "Pre-ResNet-14-0.5".
_RATIO = r"(\d+(?:\.\d+)?)"

register(ModelFamily(
    pattern=r"densewrn(\d+)_" + _RATIO,
    builder=lambda m, num_classes, **kw: resnet.densenet_shaped(
        int(m[1]), float(m[2]), num_classes, bottleneck=False, **kw),
    examples=("densewrn1_1", "densewrn4_0.5"),
    description="Wide-ResNet student shaped like densenet90_60, "
                "densewrn{blocks per stage}_{width ratio}"))

register(ModelFamily(
    pattern=r"densepreresnet(\d+)_" + _RATIO,
    builder=lambda m, num_classes, **kw: resnet.densenet_shaped(
        int(m[1]), float(m[2]), num_classes, bottleneck=True, **kw),
    examples=("densepreresnet14_0.5", "densepreresnet14_1"),
    description="bottleneck Pre-ResNet student shaped like densenet90_60, "
                "densepreresnet{blocks per stage}_{width ratio}"))
