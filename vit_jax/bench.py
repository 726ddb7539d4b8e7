r"""Benchmarks that print ratios.

  python -m vit_jax.bench data [--workers 2] [--out results/bench_data.json]
  python -m vit_jax.bench model [--timm] [--out results/bench_model.json]  (see bench_model.py)

`data`: images/s of the full input pipeline (real on-disk formats made in a
temporary directory: CIFAR-style tfds array_record at 32x32, JPEG ImageFolder
at 224) including the on-device augmentation of the matching recipe, against
the images/s of that recipe's train step measured in the same run.

`model`: the train step of every variant against timm and the matmul peak.
"""
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from vit_jax import bench_model

_WORKERS = flags.DEFINE_integer('workers', 2, 'grain worker processes.')
_OUT = flags.DEFINE_string('out', '', 'Write the numbers as JSON here too.')
_IMAGES_32 = flags.DEFINE_integer('images_32', 8192, 'Records in the 32x32 data set.')
_IMAGES_224 = flags.DEFINE_integer('images_224', 512, 'JPEG files in the 224 data set.')


def _cifar_like(root: str, n: int) -> None:
  import tensorflow_datasets as tfds
  rng = np.random.default_rng(0)
  examples = lambda k: [(i, {'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                             'label': i % 100, 'coarse_label': i % 20, 'id': str(i)})
                        for i in range(k)]
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(num_classes=100),
      'coarse_label': tfds.features.ClassLabel(num_classes=20), 'id': tfds.features.Text()})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='cifar100', version='3.0.2', data_dir=root, features=features,
      split_datasets={'train': examples(n), 'test': examples(256)}, file_format='array_record')


def _jpeg_folder(root: str, n: int) -> None:
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (('train', n), ('val', 64)):
    for i in range(count):
      folder = os.path.join(root, split, f'n{i % 8:08d}')
      os.makedirs(folder, exist_ok=True)
      # ImageNet's typical 500x375, smooth content so JPEG sizes are realistic.
      base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
      Image.fromarray(base).resize((500, 375), Image.BICUBIC).save(
          os.path.join(folder, f'{i}.JPEG'), quality=90)


def _time(fn, repeats: int) -> float:
  fn()                                           # compile / warm up
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - t0) / repeats


def bench_shape(config, steps: int) -> dict:
  """Pipeline (grain + on-device augmentation) vs train-step images/s for one config."""
  from vit_jax import train
  from vit_jax.data import augment, pipeline, sources
  trainer = train.Trainer(config)
  state = trainer.setup(steps_per_epoch=100)
  src = sources.get(config.dataset, 'train')
  it = pipeline.TrainStream(src, config.dataset, config.batch_size, seed=0).batches(
      0, config.dataset.workers)
  cpu_s = _time(lambda: next(it), steps * 4)
  augment_fn = jax.jit(lambda k, x, y: augment.augment_batch(k, x, jax.nn.one_hot(y, config.dataset.num_classes), config))

  def data_batch():
    batch = next(it)
    del batch['unreadable']
    x, _ = augment_fn(jax.random.key(0), batch['image'], batch['label'])
    jax.block_until_ready(x)
    return batch

  batch = data_batch()
  data_s = _time(data_batch, steps * 4)
  global_batch = trainer.global_batch(batch)
  holder = {'state': state}

  def step():
    holder['state'], m = trainer.train_step(holder['state'], global_batch)
    jax.block_until_ready(m['loss'])

  step_s = _time(step, steps)
  data_ips = config.batch_size / data_s
  train_ips = config.batch_size / step_s
  return {'batch': config.batch_size, 'cpu_loader_images_per_s': config.batch_size / cpu_s,
          'pipeline_images_per_s': data_ips,
          'train_step_images_per_s': train_ips, 'ratio': data_ips / train_ips}


def bench_checkpoint(config, saves: int = 3) -> dict:
  """Seconds one epoch checkpoint holds up the train loop (median of `saves`), written
  synchronously and in the background (orbax async, the default); each write is let to
  finish, outside the timing, before the next."""
  import statistics
  from vit_jax import checkpoint
  from vit_jax import models
  from vit_jax import train
  trainer = train.Trainer(config)
  state = trainer.setup(steps_per_epoch=1)
  out = {'params': models.count_params(state.params),
         'state_mb': sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20}
  for mode in ('sync', 'async'):
    with tempfile.TemporaryDirectory() as workdir:
      mngr = checkpoint.manager(workdir, 1, async_save=mode == 'async')
      blocked = []
      for step in range(1, saves + 1):
        t0 = time.perf_counter()
        checkpoint.save(mngr, step, state, {'seed': 0}, {'val_acc1': float(step)}, wait=False)
        blocked.append(time.perf_counter() - t0)
        checkpoint.finish(mngr)
      mngr.close()
    out[f'{mode}_blocked_s'] = statistics.median(blocked)
  return out


def _report(name: str, r: dict) -> None:
  print(f"{name}: CPU loader {r['cpu_loader_images_per_s']:.0f} img/s, full pipeline "
        f"{r['pipeline_images_per_s']:.0f} img/s, train step {r['train_step_images_per_s']:.1f} "
        f"img/s (batch {r['batch']}): pipeline / train step = {r['ratio']:.1f}x", flush=True)


def main(argv):
  if argv[1:] not in (['data'], ['model'], ['checkpoint']):
    sys.exit(f'error: unknown benchmark {argv[1:]}; available: data, model, checkpoint')
  logging.set_verbosity(logging.WARNING)
  if argv[1] == 'model':
    _write(bench_model.run(save=_write))
    return
  from vit_jax import config_lib
  if argv[1] == 'checkpoint':
    results = {}
    for name, arg in (('vanilla_quick', 'quick'), ('vit_s16_224', '')):
      results[name] = r = bench_checkpoint(config_lib.load('vanilla', arg))
      print(f"{name}: {r['params']:,} parameters, train state {r['state_mb']:.1f} MiB: the "
            f"loop waits {r['sync_blocked_s']:.3f} s per checkpoint written synchronously, "
            f"{r['async_blocked_s']:.3f} s in the background", flush=True)
    _write(results)
    return
  results = {'device': str(jax.devices()[0].device_kind), 'cpu_count': os.cpu_count(),
             'workers': _WORKERS.value}
  with tempfile.TemporaryDirectory() as tmp:
    _cifar_like(os.path.join(tmp, 'tfds'), _IMAGES_32.value)
    c = config_lib.load('deit_cifar100')          # crop, flip, RandAugment
    c.dataset.update(data_dir=os.path.join(tmp, 'tfds'), workers=_WORKERS.value)
    c.batch_size = 64
    results['cifar_32'] = bench_shape(c, steps=3)
    _report('32x32, seed-000 recipe (crop, flip, RandAugment)', results['cifar_32'])

    _jpeg_folder(os.path.join(tmp, 'in100'), _IMAGES_224.value)
    c = config_lib.load('vanilla')      # RRC, 3-Augment, mixing
    c.dataset.update(data_dir=os.path.join(tmp, 'in100'), workers=_WORKERS.value)
    c.batch_size = 32
    results['imagenet_224'] = bench_shape(c, steps=2)
    _report('224x224, DeiT-III recipe (JPEG, RRC, 3-Augment, jitter, mixup/cutmix)',
            results['imagenet_224'])
  _write(results)


def _write(results: dict) -> None:
  if _OUT.value:
    results['command'] = ' '.join(['python -m vit_jax.bench'] + sys.argv[1:])
    with open(_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
