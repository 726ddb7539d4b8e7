"""Run in a subprocess with 4 host devices (tests/reference/test_ref_augment.py compares what
it writes with timm's Mixup applied shard by shard): the mixing of the train step, inside
jax.jit over the 'data' mesh axis, on batches sharded over the 4 devices.

  python tests/mix_shards.py OUT.npz

Writes, for KEYS keys: the uint8 batch, its labels, the mixed images and targets; the
collectives XLA compiled into the mixing with mix_groups 4 (one group per shard) and 1 (one
Mixup over the whole batch); and the train step's losses and params on 1 and on 4 devices
with mixing on, each group spanning two shards.
"""
import re
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax import config_lib
from vit_jax.bench import gpu
from vit_jax.bench import model as bench_model
from vit_jax.data import augment
from vit_jax.train import losses
from vit_jax.train import steps

KEYS, BATCH, H, W, CLASSES = 6, 16, 12, 10, 10
# A cross-device op in compiled HLO: '%name = SHAPE op(' (or its async '-start' form).
COLLECTIVE = re.compile(r'= (\S+) (all-gather|all-to-all|collective-permute|all-reduce|'
                        r'reduce-scatter)(?:-start)?\(')


def mixing_config(groups):
  """DeiT's recipe (mixup 0.8, cutmix 1.0, DeiT's box, smoothing 0.1) with only the mixing on;
  mean 0, std 1: the mixed images are the 8-bit values / 255."""
  c = config_lib.load('deit_distill')
  c.augment.update(hflip=False, randaugment_layers=0, erase_prob=0.0, mix_groups=groups)
  c.dataset.update(mean=(0.0,) * 3, std=(1.0,) * 3, num_classes=CLASSES)
  return c


def sharded_mix(mesh, config):
  rows, whole = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())

  def mix(key, images, labels):
    targets = losses.smooth_labels(jax.nn.one_hot(labels, CLASSES), config.loss.label_smoothing)
    return augment.augment_batch(key, images, targets, config)
  return jax.jit(mix, in_shardings=(whole, rows, rows), out_shardings=(rows, rows))


def collectives(fn, *args) -> list:
  """'op shape' of every collective that moves more than a scalar between the devices (the
  per-group Beta draws, sharded with their groups, agree on their rejection loops' scalar
  predicates with an all-reduce)."""
  text = fn.lower(*args).compile().as_text()
  return sorted({f'{op} {shape}' for shape, op in COLLECTIVE.findall(text)
                 if not re.fullmatch(r'\w+\[\](\{\})?', shape)})


def main(out):
  assert jax.device_count() == 4, jax.devices()
  mesh = steps.make_mesh()
  rows = NamedSharding(mesh, P('data'))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (KEYS, BATCH, H, W, 3), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, (KEYS, BATCH)).astype(np.int32)
  fn = sharded_mix(mesh, mixing_config(4))
  mixed, targets = [], []
  for i in range(KEYS):
    x = jax.device_put(images[i], rows)
    assert len(x.sharding.device_set) == 4
    got_x, got_t = fn(jax.random.key(i), x, jax.device_put(labels[i], rows))
    mixed.append(np.asarray(got_x))
    targets.append(np.asarray(got_t))
  args = (jax.random.key(0), jax.device_put(images[0], rows), jax.device_put(labels[0], rows))
  per_shard = collectives(fn, *args)
  whole_batch = collectives(sharded_mix(mesh, mixing_config(1)), *args)

  c = config_lib.load('vanilla', 'quick')
  c.augment.update(mixup=0.8, cutmix=1.0, mix_groups=2)
  c.model.update(depth=2)
  c.batch_size = BATCH
  step = gpu.sharded_vs_single(c, jax.devices(), bench_model.synthetic_batch(c, BATCH))
  np.savez(out, images=images, labels=labels, mixed=np.stack(mixed), targets=np.stack(targets),
           per_shard_collectives=np.array(per_shard, dtype=str),
           whole_batch_collectives=np.array(whole_batch, dtype=str),
           step_loss_diff=step['max_loss_diff'], step_param_diff=step['max_param_diff'])
  print('OK', per_shard, whole_batch, step['max_loss_diff'], step['max_param_diff'])


if __name__ == '__main__':
  main(sys.argv[1])
