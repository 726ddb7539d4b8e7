"""The data benchmark's measurement on a tiny config (numbers are not checked, only their form)."""
from vit_jax import bench
from vit_jax import config_lib


def test_bench_shape_reports_consistent_ratio():
  c = config_lib.quick(config_lib.deit_small_cifar100(config_lib.base()))
  c.model.update(depth=1, width=32, num_heads=2)
  c.augment.update(hflip=True, randaugment_layers=2)
  r = bench.bench_shape(c, steps=1)
  assert r['batch'] == 64
  assert r['pipeline_images_per_s'] > 0 and r['train_step_images_per_s'] > 0
  assert abs(r['ratio'] - r['pipeline_images_per_s'] / r['train_step_images_per_s']) < 1e-9
  assert r['cpu_loader_images_per_s'] > 0
