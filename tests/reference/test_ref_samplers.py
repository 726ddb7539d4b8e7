"""Repeated augmentation against timm's RepeatAugSampler (DeiT's RASampler, which timm
took over), given the same per-epoch permutation: every process reads exactly the
record keys timm's sampler gives that rank."""
import grain
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
  for rank in range(processes):
    ours = samplers.RepeatedAugSampler(
        n, 3, seed=0, shard_options=grain.sharding.ShardOptions(rank, processes),
        permutation=_torch_permutation(n))
    per_process = n // processes
    for epoch in range(2):
      timm_sampler = RepeatAugSampler(list(range(n)), num_replicas=processes, rank=rank,
                                      shuffle=True, num_repeats=3)
      timm_sampler.set_epoch(epoch)
      want = list(timm_sampler)
      got = [ours[(epoch * per_process + k) * processes + rank].record_key
             for k in range(per_process)]
      assert got == want
