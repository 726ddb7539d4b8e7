"""The repeated-augmentation sampler over several processes."""
import grain
import numpy as np
import pytest

from vit_jax.data import samplers
from vit_jax.data import sources
from vit_jax.data import pipeline
import ml_collections


def _draws(num_records, processes, repeats, epochs=1, seed=0):
  """{rank: record keys of its first `epochs` epochs}, reading positions as grain does."""
  out = {}
  for rank in range(processes):
    shard = grain.sharding.ShardOptions(shard_index=rank, shard_count=processes)
    s = samplers.RepeatedAugSampler(num_records, repeats, seed, shard)
    per_process = num_records // processes
    out[rank] = [s[k * processes + rank].record_key for k in range(per_process * epochs)]
  return out


@pytest.mark.parametrize('processes', [1, 2, 4])
def test_each_drawn_index_three_times_per_epoch_over_processes(processes):
  n = 24 * processes
  draws = _draws(n, processes, 3, epochs=2)
  per_process = n // processes
  for epoch in range(2):
    keys = np.concatenate([d[epoch * per_process:(epoch + 1) * per_process]
                           for d in draws.values()])
    assert len(keys) == n                                    # epoch length kept
    counts = np.bincount(keys, minlength=n)
    assert set(counts.tolist()) == {0, 3}                    # every drawn index exactly 3 times
    assert (counts == 3).sum() == n // 3
  first = set(np.concatenate([d[:per_process] for d in draws.values()]).tolist())
  second = set(np.concatenate([d[per_process:] for d in draws.values()]).tolist())
  assert first != second                                     # reshuffled each epoch
  if processes > 1:
    # The copies of one image go to different processes.
    where = {}
    for rank, d in draws.items():
      for k in d[:per_process]:
        where.setdefault(k, set()).add(rank)
    assert all(len(r) == min(3, processes) for r in where.values())


def test_train_loader_uses_it():
  src = sources.digits('train', 8)
  cfg = ml_collections.ConfigDict(dict(name='digits', random_crop_padding=0,
                                       crop_padding_mode='reflect', workers=0,
                                       repeated_aug=3))
  loader = pipeline.train_loader(src, cfg, per_process_batch=75, seed=1)
  batch = next(iter(loader))
  images = batch['image'].reshape(25, 3, -1)
  assert (images == images[:, :1]).all()             # each image 3 times in a row
  assert len({im.tobytes() for im in images[:, 0]}) > 20
