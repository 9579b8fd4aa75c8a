"""Parameter and multiply-accumulate counts of registered models, from shapes.

Nothing is allocated or run: parameters come from `jax.eval_shape` of the
initialiser, and multiply-accumulates from the jaxpr of one inference-mode
forward pass on a single image, counting the two primitives that hold the
network's arithmetic, `conv_general_dilated` and `dot_general` (norms,
activations, pooling and additions are left out, the convention of the
papers' FLOP counts; one MAC is one multiply and one add).
"""

import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from ban_jax import models


def abstract_variables(module, image_shape=(32, 32, 3)) -> Any:
  """The module's variables as ShapeDtypeStructs, for one image."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)


def _param_count(variables) -> int:
  return sum(math.prod(p.shape)
             for p in jax.tree_util.tree_leaves(variables["params"]))


def count_params(name: str, num_classes: int = 100,
                 image_shape: tuple[int, ...] = (32, 32, 3), **kwargs) -> int:
  """Trainable parameters (the 'params' collection) of model `name`."""
  module = models.get_model(name, num_classes, **kwargs)
  return _param_count(abstract_variables(module, image_shape))


def _subjaxprs(params: dict[str, Any]) -> Iterator[Any]:
  # Higher-order primitives (jit, remat, cond, custom_vjp, ...) keep their
  # bodies in their params, as a Jaxpr, a ClosedJaxpr or a sequence of them.
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(v, "eqns"):
        yield v
      elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        yield v.jaxpr


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      kernel = eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      # Each output element sums over (input features / groups) x window.
      total += math.prod(out) * (math.prod(kernel) // out_features)
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += (math.prod(eqn.outvars[0].aval.shape)
                * math.prod(lhs[d] for d in lhs_contract))
    inner = [_jaxpr_macs(sub) for sub in _subjaxprs(eqn.params)]
    if name == "cond":  # One branch runs: the dearest one counts.
      total += max(inner, default=0)
    elif name == "scan":  # The body runs `length` times.
      total += eqn.params["length"] * sum(inner)
    else:
      total += sum(inner)
  return total


def module_cost(module, image_shape=(32, 32, 3)) -> tuple[int, int]:
  """(parameters, multiply-accumulates per image) of a Linen module."""
  variables = abstract_variables(module, image_shape)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  closed = jax.make_jaxpr(
      lambda v, x: module.apply(v, x, train=False))(variables, x)
  return _param_count(variables), _jaxpr_macs(closed.jaxpr)


def count_macs(name: str, num_classes: int = 100,
               image_shape: tuple[int, ...] = (32, 32, 3), **kwargs) -> int:
  """Multiply-accumulates per image of model `name` (inference mode)."""
  module = models.get_model(name, num_classes, **kwargs)
  return module_cost(module, image_shape)[1]
