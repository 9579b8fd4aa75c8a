"""Lists the registered models with parameters and MACs per 32x32 image.

  python -m ban_jax.models                      # every example, 100 classes
  python -m ban_jax.models --num_classes=10 densenet90_60 wrn28_10

Counts come from shapes only (see cost.py), so this runs on a laptop CPU.
"""

import argparse

from ban_jax import models
from ban_jax.models import cost


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m ban_jax.models",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*",
                      help="model names (default: every registered example)")
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args(argv)
  shape = (args.image_size, args.image_size, 3)
  names = args.names or models.registered_names()
  for name in names:
    try:
      models.get_model(name, args.num_classes)
    except ValueError as e:
      parser.error(str(e))
  print(f"{'model':<22} {'params':>12} {'MACs/image':>14}"
        f"   ({args.num_classes} classes, {args.image_size}x"
        f"{args.image_size}x3)")
  for name in names:
    params, macs = cost.module_cost(
        models.get_model(name, args.num_classes), shape)
    print(f"{name:<22} {params / 1e6:>11.2f}M {macs / 1e9:>13.3f}G",
          flush=True)


if __name__ == "__main__":
  main()
