"""Which records each training batch holds: a function of (seed, step) alone, the same
for any number of processes and loader workers.

Epoch e shuffles the record keys with a generator seeded by (seed, e). Global batch b
of the epoch holds positions [b * B, (b + 1) * B) of the epoch's order. With repeated
augmentation (DeiT's RASampler, k repeats) that order is the shuffled keys each repeated
k times in a row, of which an epoch reads the usual N positions: about N / k distinct
images, each k times, every copy augmented differently. Process r of P takes its share
of every global batch: with repeated augmentation the positions r, r + P, r + 2P, ...
(so the copies of one image go to different processes, as DeiT's sampler gives ranks
their strided share), else the contiguous rows [r * B / P, (r + 1) * B / P).
"""
import numpy as np


class BatchOrder:
  """The record keys of every global batch of an endless run of epochs."""

  def __init__(self, num_records: int, global_batch: int, seed: int, repeats: int = 1,
               permutation=None):
    """permutation(epoch) -> the epoch's shuffled keys; by default seeded by (seed, epoch).
    (timm's RepeatAugSampler draws torch.randperm from a generator seeded by the epoch.)"""
    if repeats < 1:
      raise ValueError(f'dataset.repeated_aug={repeats} must be >= 1')
    if global_batch > num_records:
      raise ValueError(f'batch_size={global_batch} is larger than the {num_records} training '
                       'images')
    self.num_records, self.global_batch, self.seed = num_records, global_batch, seed
    self.repeats = repeats
    self.steps_per_epoch = num_records // global_batch
    self._permutation = permutation
    self._cache: dict[int, np.ndarray] = {}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The epoch's keys in order (with repeats: each shuffled key `repeats` times in a row)."""
    if epoch not in self._cache:
      perm = (self._permutation(epoch) if self._permutation else
              np.random.default_rng([self.seed, epoch]).permutation(self.num_records))
      self._cache = {epoch: np.repeat(np.asarray(perm, np.int64), self.repeats)}
    return self._cache[epoch]

  def global_keys(self, step: int) -> np.ndarray:
    """(B,) keys of global batch `step`, counted from the first step of the run."""
    epoch, b = divmod(step, self.steps_per_epoch)
    return self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]

  def process_rows(self, index: int, count: int) -> np.ndarray:
    """Which rows of a global batch process `index` of `count` takes."""
    if self.global_batch % count:
      raise ValueError(f'batch_size={self.global_batch} is not divisible by the {count} '
                       'processes')
    if self.repeats > 1:
      return np.arange(index, self.global_batch, count)
    per = self.global_batch // count
    return np.arange(index * per, (index + 1) * per)

  def state(self) -> dict:
    """What fixes the order, saved with a checkpoint and compared on resume."""
    return dict(num_records=self.num_records, global_batch=self.global_batch, seed=self.seed,
                repeats=self.repeats)
