"""CIFAR through tfds.data_source, from a small array_record data set written in the test."""
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
