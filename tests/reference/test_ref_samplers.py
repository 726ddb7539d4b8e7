"""Repeated augmentation against timm's RepeatAugSampler (DeiT's RASampler, which timm
took over), given the same per-epoch permutation: over an epoch every process reads
exactly the record keys timm's sampler gives that rank."""
import numpy as np
import pytest
import torch
from timm.data.distributed_sampler import RepeatAugSampler

from vit_jax.data import samplers


def _torch_permutation(n):
  """timm's draw: torch.randperm(n) from a generator seeded with the epoch."""
  def perm(epoch):
    g = torch.Generator()
    g.manual_seed(epoch)
    return torch.randperm(n, generator=g).numpy()
  return perm


@pytest.mark.parametrize('processes', [1, 2, 4])
def test_each_process_reads_what_timm_gives_its_rank(processes):
  n = 512     # a multiple of 256: timm keeps len // 256 * 256 / replicas per rank, we len / P
  order = samplers.BatchOrder(n, 64, seed=0, repeats=3, permutation=_torch_permutation(n))
  for rank in range(processes):
    rows = order.process_rows(rank, processes)
    for epoch in range(2):
      timm_sampler = RepeatAugSampler(list(range(n)), num_replicas=processes, rank=rank,
                                      shuffle=True, num_repeats=3)
      timm_sampler.set_epoch(epoch)
      got = np.concatenate([order.global_keys(s)[rows] for s in
                            range(epoch * order.steps_per_epoch,
                                  (epoch + 1) * order.steps_per_epoch)])
      assert got.tolist() == list(timm_sampler)
