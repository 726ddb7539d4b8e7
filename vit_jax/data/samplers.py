"""Repeated augmentation (DeiT's RASampler) as a grain sampler.

Each epoch, the records are shuffled (seeded by seed and epoch), every record
is repeated `repeats` times in a row, and position m of that list goes to
process m % P. Each process keeps the usual epoch length (num_records // P),
so over all processes an epoch draws the first num_records positions: about
num_records / repeats distinct images, each seen `repeats` times, every copy
on another process (and so another augmentation draw).
"""
import grain
import numpy as np


class RepeatedAugSampler:
  """grain Sampler: position k of process r is global position r + k * P."""

  def __init__(self, num_records: int, repeats: int, seed: int,
               shard_options: grain.sharding.ShardOptions, permutation=None):
    """permutation(epoch) -> the epoch's shuffled record keys; by default seeded by
    (seed, epoch). (timm's sampler draws torch.randperm(generator seeded by epoch).)"""
    if repeats < 1:
      raise ValueError(f'dataset.repeated_aug={repeats} must be >= 1')
    self._num_records, self._repeats, self._seed = num_records, repeats, seed
    self._shard_options = shard_options
    self._per_process = num_records // shard_options.shard_count
    self._permutation = permutation
    self._perm_cache: dict[int, np.ndarray] = {}

  def __len__(self):
    return 2**62  # endless, like IndexSampler(num_epochs=None)

  def __repr__(self):
    return (f'RepeatedAugSampler(num_records={self._num_records}, repeats={self._repeats}, '
            f'seed={self._seed}, shard_options={self._shard_options!r})')

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perm_cache:
      perm = (self._permutation(epoch) if self._permutation else
              np.random.default_rng([self._seed, epoch]).permutation(self._num_records))
      self._perm_cache = {epoch: np.asarray(perm)}
    return self._perm_cache[epoch]

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    count = self._shard_options.shard_count
    rank, local = index % count, index // count
    epoch, j = divmod(local, self._per_process)
    position = rank + j * count                      # in the repeated list of this epoch
    key = int(self._perm(epoch)[position // self._repeats])
    rng = np.random.Generator(np.random.Philox(key=self._seed + index))
    return grain.RecordMetadata(index=index, record_key=key, rng=rng)


class GlobalBatchOrder:
  """grain Sampler: every process reads its rows of each global batch from one global order.

  grain's IndexSampler shards the records first and shuffles each shard, so the
  global batches depend on the number of processes. Here the records are read
  in the order of `unsharded` (a sampler of one process), and process r of P
  takes rows [r * b, (r + 1) * b) of every global batch of P * b: N processes
  train on exactly the batches (rows and random streams) that one would.
  """

  def __init__(self, unsharded, per_process_batch: int,
               shard_options: grain.sharding.ShardOptions):
    self._unsharded, self._b = unsharded, per_process_batch
    self._shard_options = shard_options   # grain's DataLoader reads it from here

  def __len__(self):
    return len(self._unsharded)

  def __repr__(self):
    return (f'GlobalBatchOrder({self._unsharded!r}, per_process_batch={self._b}, '
            f'shard_options={self._shard_options!r})')

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    count = self._shard_options.shard_count
    rank, local = index % count, index // count    # grain reads index rank + local * P
    batch, row = divmod(local, self._b)
    record = self._unsharded[batch * self._b * count + rank * self._b + row]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)
