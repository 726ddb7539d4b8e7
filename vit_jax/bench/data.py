"""`python -m vit_jax.bench data`: images/s of the full input pipeline against the train step.

Real on-disk formats are made in a temporary directory (CIFAR-style tfds array_record at
32x32, a JPEG ImageFolder at 224); the pipeline includes the on-device augmentation of
the matching recipe, and the train step of that recipe is measured in the same run.
"""
import os
import tempfile
import time

from absl import flags
import jax
import numpy as np

from vit_jax import config_lib
from vit_jax.data import augment
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.train import steps as train_steps

_WORKERS = flags.DEFINE_integer('workers', 2, 'grain worker processes.')
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


def jpeg_folder(root: str, n: int, n_val: int = 64, classes: int = 8) -> None:
  """An ImageFolder of n train and n_val JPEGs at ImageNet's typical 500x375."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (('train', n), ('val', n_val)):
    for i in range(count):
      folder = os.path.join(root, split, f'n{i % classes:08d}')
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
  compiled = train_steps.CompiledSteps(config)
  state = compiled.setup(steps_per_epoch=100)
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
  global_batch = compiled.global_batch(batch)
  holder = {'state': state}

  def step():
    holder['state'], m = compiled.train_step(holder['state'], global_batch)
    jax.block_until_ready(m['loss'])

  step_s = _time(step, steps)
  data_ips = config.batch_size / data_s
  train_ips = config.batch_size / step_s
  return {'batch': config.batch_size, 'cpu_loader_images_per_s': config.batch_size / cpu_s,
          'pipeline_images_per_s': data_ips,
          'train_step_images_per_s': train_ips, 'ratio': data_ips / train_ips}


def _report(name: str, r: dict) -> None:
  print(f"{name}: CPU loader {r['cpu_loader_images_per_s']:.0f} img/s, full pipeline "
        f"{r['pipeline_images_per_s']:.0f} img/s, train step {r['train_step_images_per_s']:.1f} "
        f"img/s (batch {r['batch']}): pipeline / train step = {r['ratio']:.1f}x", flush=True)


def run(save) -> dict:
  del save   # written whole at the end
  results = {'device': str(jax.devices()[0].device_kind), 'cpu_count': os.cpu_count(),
             'workers': _WORKERS.value}
  with tempfile.TemporaryDirectory() as tmp:
    _cifar_like(os.path.join(tmp, 'tfds'), _IMAGES_32.value)
    c = config_lib.load('deit_cifar100')          # crop, flip, RandAugment
    c.dataset.update(data_dir=os.path.join(tmp, 'tfds'), workers=_WORKERS.value)
    c.batch_size = 64
    results['cifar_32'] = bench_shape(c, steps=3)
    _report('32x32, seed-000 recipe (crop, flip, RandAugment)', results['cifar_32'])

    jpeg_folder(os.path.join(tmp, 'in100'), _IMAGES_224.value)
    c = config_lib.load('vanilla')      # RRC, 3-Augment, mixing
    c.dataset.update(data_dir=os.path.join(tmp, 'in100'), workers=_WORKERS.value)
    c.batch_size = 32
    results['imagenet_224'] = bench_shape(c, steps=2)
    _report('224x224, DeiT-III recipe (JPEG, RRC, 3-Augment, jitter, mixup/cutmix)',
            results['imagenet_224'])
  return results
