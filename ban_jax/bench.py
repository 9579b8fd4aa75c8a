"""`python -m ban_jax.bench`: the benchmark's short name.

The project's documents and the peer comparison (../shared/bench) call the
benchmark by this name; the code lives in `ban_jax.tools.bench`.
"""

from ban_jax.tools.bench import main

if __name__ == "__main__":
  main()
