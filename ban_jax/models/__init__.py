"""Model registry: every network is chosen by name from the config.

Names are patterns with numbers in them (`wrn28_10` is WRN-28-10). Each family
registers a regular expression and a builder; `get_model` finds the one that
matches or fails with the list of valid names.

Conventions every registered model follows, which the pipeline relies on:
  * `module.apply(variables, images, train=...)` returns float32 logits;
  * the first convolution is named `stem` and the final linear layer
    `classifier` (the cross-architecture option copies and freezes those);
  * stage inputs/outputs are sown into the 'intermediates' collection.
"""

import dataclasses
import re
from typing import Callable

from flax import linen as nn

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


register(ModelFamily(
    pattern=r"wrn(\d+)_(\d+)",
    builder=lambda m, num_classes, **kw: wrn.WideResNet(
        depth=int(m[1]), width=int(m[2]), num_classes=num_classes, **kw),
    examples=("wrn10_2", "wrn16_4", "wrn16_8", "wrn28_1", "wrn28_2",
              "wrn28_5", "wrn28_10", "wrn40_4"),
    description="Wide-ResNet wrn{depth}_{width}, depth = 6n+4"))
