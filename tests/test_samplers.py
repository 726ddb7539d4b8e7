"""Which records each global batch holds (repeated augmentation included), over processes."""
import numpy as np
import pytest

from vit_jax.data import samplers


def _epoch_keys(order, processes, epoch):
  """{rank: the keys it reads in `epoch`}."""
  steps = range(epoch * order.steps_per_epoch, (epoch + 1) * order.steps_per_epoch)
  return {r: np.concatenate([order.global_keys(s)[order.process_rows(r, processes)]
                             for s in steps]) for r in range(processes)}


@pytest.mark.parametrize('processes', [1, 2, 4])
def test_each_drawn_index_three_times_per_epoch_over_processes(processes):
  n = 24 * processes
  order = samplers.BatchOrder(n, 4 * processes, seed=0, repeats=3)
  firsts = []
  for epoch in range(2):
    draws = _epoch_keys(order, processes, epoch)
    keys = np.concatenate(list(draws.values()))
    assert len(keys) == n                                    # epoch length kept
    counts = np.bincount(keys, minlength=n)
    assert set(counts.tolist()) == {0, 3}                    # every drawn index exactly 3 times
    assert (counts == 3).sum() == n // 3
    firsts.append(set(keys.tolist()))
    if processes > 1:                                        # copies go to different processes
      where = {}
      for rank, d in draws.items():
        for k in d:
          where.setdefault(int(k), set()).add(rank)
      assert all(len(r) == min(3, processes) for r in where.values())
  assert firsts[0] != firsts[1]                              # reshuffled each epoch


def test_without_repeats_every_record_once_per_epoch_in_contiguous_shares():
  order = samplers.BatchOrder(50, 12, seed=7)
  assert order.steps_per_epoch == 4                          # 48 of 50 records, remainder dropped
  keys = np.concatenate([order.global_keys(s) for s in range(4)])
  assert len(set(keys.tolist())) == 48
  np.testing.assert_array_equal(order.process_rows(1, 3), [4, 5, 6, 7])
  with pytest.raises(ValueError, match='batch_size=12 is not divisible by the 5 processes'):
    order.process_rows(0, 5)
  with pytest.raises(ValueError, match='batch_size=64 is larger than the 50 training images'):
    samplers.BatchOrder(50, 64, seed=0)
