"""Developer tools: benchmarks and profile summaries, run as `python -m ban_jax.tools.<name>`."""
