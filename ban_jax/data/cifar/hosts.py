"""How several hosts share the CIFAR train split and agree on its stats.

Each host keeps the contiguous block `[i * k, (i + 1) * k)` of the train
split, `k = n // process_count`, so every host runs the same number of
steps; the hosts' channel statistics are then combined so that every host
normalises with those of the train split as a whole.
"""

from typing import Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from ban_jax.data import channel_stats

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def capped(num_examples: int, cap: int | None) -> int:
  """How many of `num_examples` a smoke run's cap (None: none) keeps."""
  return min(num_examples, cap) if cap else num_examples


def host_shard(num_examples: int, process_index: int,
               process_count: int) -> tuple[int, int]:
  """[start, stop) of this host's equal, contiguous share of the examples."""
  per_host = num_examples // process_count
  return process_index * per_host, (process_index + 1) * per_host


def train_channel_stats(train_images: np.ndarray,
                        process_count: int) -> Stats:
  """Channel mean/std of the train split, over all hosts when there are
  several (so that every host normalises the same way)."""
  mean, std = channel_stats(train_images)
  # Only when the shards are those of this run's processes: a caller that
  # simulates another host count (tests) has no matching peers to gather.
  if jax.process_count() > 1 and process_count == jax.process_count():
    mean, std = global_channel_stats(len(train_images), mean, std)
  return mean, std


def combine_channel_stats(counts: Sequence[int], means: np.ndarray,
                          stds: np.ndarray) -> Stats:
  """Mean/std of the union of shards from each shard's count, mean and std.

  Args:
    counts: (S,) examples per shard (any positive weights work).
    means: (S, C) per-shard channel means.
    stds: (S, C) per-shard channel standard deviations.

  Returns:
    The channel mean and std over all shards together.
  """
  counts = np.asarray(counts, np.float64)[:, None]
  means = np.asarray(means, np.float64)
  stds = np.asarray(stds, np.float64)
  mean = (counts * means).sum(0) / counts.sum()
  # Total variance = mean within-shard variance + variance of shard means.
  var = (counts * (stds**2 + (means - mean)**2)).sum(0) / counts.sum()
  return tuple(mean.tolist()), tuple(np.sqrt(var).tolist())


def global_channel_stats(count, mean, std) -> Stats:
  """Combines each host's stats so every host normalises the same way."""
  local = np.concatenate([[count], mean, std]).astype(np.float32)
  gathered = np.asarray(multihost_utils.process_allgather(local),
                        np.float64).reshape(-1, local.size)
  channels = len(mean)
  return combine_channel_stats(gathered[:, 0], gathered[:, 1:1 + channels],
                               gathered[:, 1 + channels:])
