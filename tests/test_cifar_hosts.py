"""data/cifar/hosts.py: host shards and the combined channel statistics."""

import numpy as np

from ban_jax.data import channel_stats
from ban_jax.data.cifar import hosts


def test_combine_channel_stats_matches_whole():
  images = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 3), np.uint8)
  images[:5] //= 4  # Shards with different means.
  shards = [images[:5], images[5:12], images[12:]]
  stats = [channel_stats(s) for s in shards]
  mean, std = hosts.combine_channel_stats(
      [len(s) for s in shards], [m for m, _ in stats], [s for _, s in stats])
  whole_mean, whole_std = channel_stats(images)
  np.testing.assert_allclose(mean, whole_mean, rtol=1e-12)
  np.testing.assert_allclose(std, whole_std, rtol=1e-12)


def test_global_channel_stats_runs_in_one_process():
  # The multi-host path (an allgather) degenerates to the identity here;
  # this at least runs it.
  mean, std = hosts.global_channel_stats(
      10, (1.5, 2.0, 3.0), (0.5, 1.0, 2.0))
  np.testing.assert_allclose(mean, (1.5, 2.0, 3.0))
  np.testing.assert_allclose(std, (0.5, 1.0, 2.0))


def test_host_shard():
  assert [hosts.host_shard(50000, i, 3) for i in range(3)] == [
      (0, 16666), (16666, 33332), (33332, 49998)]
  assert hosts.host_shard(50000, 0, 1) == (0, 50000)
