"""Born-Again Neural Networks (Furlanello et al., ICML 2018) in JAX and Flax."""

__version__ = "0.1.0"
