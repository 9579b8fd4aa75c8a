"""`python -m ban_jax.bench`: the benchmark's short name.

The benchmark lives in `ban_jax.tools.bench`; instructions written for the
peer comparison before it moved there still call it by this name.
"""

from ban_jax.tools.bench import main

if __name__ == "__main__":
  main()
