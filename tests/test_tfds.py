"""CIFAR through tfds.data_source, from a small array_record data set written in the test."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_jax.data import pipeline
from vit_jax.data import sources


@pytest.fixture(scope='module')
def cifar100_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)

  def examples(n):
    return [(i, {'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 'label': i % 100,
                 'coarse_label': i % 20, 'id': f'{i}'}) for i in range(n)]

  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(num_classes=100),
      'coarse_label': tfds.features.ClassLabel(num_classes=20),
      'id': tfds.features.Text()})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='cifar100', version='3.0.2', data_dir=root, features=features,
      split_datasets={'train': examples(40), 'test': examples(12)}, file_format='array_record')
  return root


def test_reads_the_prepared_array_record_data(cifar100_dir):
  cfg = ml_collections.ConfigDict(dict(name='cifar100', data_dir=cifar100_dir, image_size=32,
                                       random_crop_padding=4, crop_padding_mode='reflect',
                                       workers=0, repeated_aug=1))
  sources.check_available(cfg)
  train, val = sources.get(cfg, 'train'), sources.get(cfg, 'val')
  assert (len(train), len(val)) == (40, 12)
  batch = next(pipeline.TrainStream(train, cfg, 8, seed=0).batches(0))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['label'].max() < 100
  evals = list(pipeline.eval_batches(val, 8))
  assert sum(int(b['mask'].sum()) for b in evals) == 12
  labels = np.concatenate([b['label'][b['mask']] for b in evals])
  np.testing.assert_array_equal(np.sort(labels), np.arange(12))   # every test example once


def test_other_dataset_in_same_dir_is_not_prepared(cifar100_dir):
  with pytest.raises(FileNotFoundError, match="'cifar10' is not prepared"):
    sources.check_tfds_prepared('cifar10', cifar100_dir)


def test_a_tfrecord_preparation_is_one_line_naming_the_conversion(tmp_path):
  from conftest import run_main
  import tensorflow_datasets as tfds
  rng = np.random.default_rng(0)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(num_classes=100)})
  examples = lambda k: [(i, {'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                             'label': i}) for i in range(k)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='cifar100', version='3.0.2', data_dir=str(tmp_path), features=features,
      split_datasets={'train': examples(8), 'test': examples(4)}, file_format='tfrecord')
  proc = run_main(['--config', 'configs/deit_cifar100.py:quick', '--workdir',
                   str(tmp_path / 'run'), '--config.dataset.name=cifar100',
                   f'--config.dataset.data_dir={tmp_path}', '--config.dataset.num_classes=100'],
                  timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert 'is prepared as tfrecord' in lines[0] and 'tfds convert_format' in lines[0]
  assert f'--dataset_version_dir={tmp_path}/cifar100/3.0.2' in lines[0]
  assert not (tmp_path / 'run').exists()


# ImageNet-1k: tfds' own `imagenet2012` builder prepares, as array_record, two tars laid out
# as image-net.org's (train: one tar per synset; validation: flat JPEGs whose labels tfds
# takes, in sorted name order, from its validation_labels.txt), of JPEGs of varied sizes.
IN1K_VAL_SIZES = ((37, 50), (64, 40), (48, 48), (30, 81))
IN1K_TRAIN_SIZES = ((40, 56), (72, 33), (45, 45))


def _jpeg(rng, height, width) -> bytes:
  import io
  from PIL import Image
  yy, xx = np.mgrid[:height, :width]
  image = np.stack([yy * 255 // height, xx * 255 // width, (yy + xx) % 256], -1)
  image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=95)
  return out.getvalue()


def _tar(path, members: dict) -> None:
  import io
  import tarfile
  with tarfile.open(path, 'w') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  """(data_dir, {val file name: class index}, {val file name: JPEG bytes})."""
  import io
  import tarfile
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  root = tmp_path_factory.mktemp('tfds_in1k')
  manual = root / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  rng = np.random.default_rng(0)
  synsets = open(imagenet_common.label_names_file()).read().split()
  val_labels = open(tfds.core.tfds_path(
      'datasets/imagenet2012/validation_labels.txt')).read().split()
  val = {f'ILSVRC2012_val_{i + 1:08d}.JPEG': _jpeg(rng, *hw)
         for i, hw in enumerate(IN1K_VAL_SIZES)}
  classes = sorted(set(val_labels[:len(val)]))            # the synsets of these val images
  _tar(manual / 'ILSVRC2012_img_val.tar', val)
  inner = {}
  for synset in classes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
      for j, hw in enumerate(IN1K_TRAIN_SIZES):
        data = _jpeg(rng, *hw)
        info = tarfile.TarInfo(f'{synset}_{j}.JPEG')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    inner[f'{synset}.tar'] = buf.getvalue()
  _tar(manual / 'ILSVRC2012_img_train.tar', inner)
  tfds.builder('imagenet2012', data_dir=str(root)).download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  expected = {name: synsets.index(label) for name, label in zip(sorted(val), val_labels)}
  return str(root), expected, val, len(classes)


def _in1k_cfg(data_dir, size):
  return ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir=data_dir, image_size=size, random_crop_padding=0,
      crop_padding_mode='constant', workers=0, repeated_aug=1, eval_crop_ratio=0.875,
      num_classes=1000))


def test_imagenet2012_loads_and_crops_to_the_config_size(imagenet_dir):
  from PIL import Image
  import io
  data_dir, expected, val_jpegs, num_classes = imagenet_dir
  cfg = _in1k_cfg(data_dir, 24)
  sources.check_available(cfg)
  train, val = sources.get(cfg, 'train'), sources.get(cfg, 'val')
  assert (len(train), len(val)) == (num_classes * len(IN1K_TRAIN_SIZES), len(IN1K_VAL_SIZES))
  # Each validation image comes back whole (its own size) with tfds' label for its name,
  # decoded as PIL decodes the JPEG that went in.
  for i in range(len(val)):
    item = val[i]
    name = item['file_name'].decode() if isinstance(item['file_name'], bytes) else item['file_name']
    want = np.asarray(Image.open(io.BytesIO(val_jpegs[name])).convert('RGB'), np.int16)
    assert item['image'].shape == want.shape and int(item['label']) == expected[name]
    assert np.abs(item['image'].astype(np.int16) - want).mean() < 1.0
  batch = next(pipeline.TrainStream(train, cfg, 8, seed=0).batches(0))
  assert batch['image'].shape == (8, 24, 24, 3) and batch['image'].dtype == np.uint8
  assert set(batch['label'].tolist()) <= set(expected.values())
  evals = list(pipeline.eval_batches(val, 3, image_size=sources.eval_crop(cfg),
                                     crop_ratio=cfg.eval_crop_ratio))
  assert all(b['image'].shape == (3, 24, 24, 3) for b in evals)
  labels = np.concatenate([b['label'][b['mask']] for b in evals])
  assert sorted(labels.tolist()) == sorted(expected.values())


def test_imagenet2012_one_epoch_run(imagenet_dir, tmp_path):
  """configs/vanilla.py:in1k's data at a tiny size: preflight passes, one epoch trains and
  evaluates over the whole validation split."""
  from vit_jax import config_lib
  from vit_jax import preflight
  from vit_jax.train import loop
  from vit_jax.train import metrics_io
  data_dir, _, _, _ = imagenet_dir
  c = config_lib.load('vanilla', 'quick')
  in1k = config_lib.load('vanilla', 'in1k').dataset
  c.dataset.update(name=in1k.name, num_classes=in1k.num_classes, data_dir=data_dir,
                   image_size=16)
  c.model.update(depth=1, width=32, num_heads=2)
  c.update(total_epochs=1, batch_size=4, eval_batch_size=4)
  c.probe.num_images = 4
  workdir = str(tmp_path / 'run')
  preflight.check(c, workdir)
  loop.train_and_evaluate(c, workdir)
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  assert [r['epoch'] for r in rows] == ['1'] and np.isfinite(float(rows[0]['train_loss']))
  assert 0.0 <= float(rows[0]['val_acc1']) <= 100.0


def test_imagenet2012_not_prepared_is_one_line_naming_the_manual_tars(tmp_path):
  cfg = _in1k_cfg(str(tmp_path), 224)
  with pytest.raises(FileNotFoundError) as e:
    sources.check_available(cfg)
  message = str(e.value)
  assert '\n' not in message and "dataset 'imagenet2012' is not prepared" in message
  assert 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar' in message
  assert f'{tmp_path}/downloads/manual' in message and "file_format='array_record'" in message
