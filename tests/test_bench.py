"""The data benchmark runs on a tiny config (the timings themselves are not tested: a
benchmark prints them)."""
from vit_jax.bench import data as bench
from vit_jax import config_lib


def test_bench_shape_runs_the_recipe_pipeline_and_step():
  c = config_lib.load('deit_cifar100', 'quick')
  c.model.update(depth=1, width=32, num_heads=2)
  c.augment.update(hflip=True, randaugment_layers=2)
  r = bench.bench_shape(c, steps=1)
  assert r['batch'] == 64
  assert r['pipeline_images_per_s'] > 0 and r['train_step_images_per_s'] > 0
  assert r['cpu_loader_images_per_s'] > 0
