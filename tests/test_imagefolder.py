"""ImageNet-style folders read through the real code path, from files made here."""
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from vit_jax import config_lib
from vit_jax import train
from vit_jax.data import imagefolder
from vit_jax.data import pipeline
from vit_jax.data import prepare_imagenet100


def _write(path, mode='RGB', size=(40, 30), fmt=None, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  channels = {'RGB': 3, 'CMYK': 4, 'L': 1}[mode]
  arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
  img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
  img.save(path, format=fmt)


def make_tree(root, classes=('a', 'b', 'c'), per_class=4, broken=True):
  for split in ('train', 'val'):
    for ci, cls in enumerate(classes):
      for i in range(per_class):
        mode, ext = [('RGB', 'JPEG'), ('L', 'PNG'), ('CMYK', 'JPEG'), ('RGB', 'PNG')][i % 4]
        _write(os.path.join(root, split, cls, f'{i}.{ext.lower()}'), mode, fmt=ext,
               size=(40 + 3 * i, 30 + 5 * ci), seed=10 * ci + i)
  if broken:
    with open(os.path.join(root, 'train', classes[0], 'broken.jpg'), 'wb') as f:
      f.write(b'not a jpeg')
  return str(root)


def test_reads_rgb_from_any_mode_and_skips_unreadable(tmp_path):
  root = make_tree(tmp_path)
  src = imagefolder.ImageFolderSource(root, 'train')
  assert src.classes == ['a', 'b', 'c'] and len(src) == 13
  items = [src[i] for i in range(len(src))]
  broken = [it for it in items if it['image'] is None]
  assert len(broken) == 1 and imagefolder.UNREADABLE.take()[0].endswith('broken.jpg')
  for it in items:
    if it['image'] is not None:
      assert it['image'].ndim == 3 and it['image'].shape[2] == 3 and it['image'].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(src.labels), [5, 4, 4])


def test_train_loader_drops_unreadable_and_crops(tmp_path):
  root = make_tree(tmp_path)
  cfg = ml_collections.ConfigDict(dict(name='imagenet100', image_size=16, random_crop_padding=0,
                                       crop_padding_mode='reflect',
                                       repeated_aug=1,
                                       workers=0))
  src = imagefolder.ImageFolderSource(root, 'train')
  it = iter(pipeline.train_loader(src, cfg, per_process_batch=6, seed=0))
  labels = np.concatenate([next(it)['label'] for _ in range(4)])   # 2 epochs of 12 readable
  batch = next(it)
  assert batch['image'].shape == (6, 16, 16, 3)
  assert np.bincount(labels, minlength=3).tolist() == [8, 8, 8]
  assert len(imagefolder.UNREADABLE.take()) >= 2                     # counted each epoch


def test_eval_center_crop(tmp_path):
  root = make_tree(tmp_path, broken=False)
  src = imagefolder.ImageFolderSource(root, 'val')
  batches = list(pipeline.eval_batches(src, 5, image_size=16))
  assert sum(int(b['mask'].sum()) for b in batches) == 12
  assert batches[0]['image'].shape == (5, 16, 16, 3)
  img = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
  assert pipeline.center_crop(img, 16).shape == (16, 16, 3)


def test_random_resized_crop_box_in_bounds():
  rng = np.random.default_rng(0)
  for h, w in [(30, 40), (100, 20), (7, 300)]:
    for _ in range(200):
      top, left, ch, cw = pipeline.random_resized_crop_box(rng, h, w)
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0


def test_bad_trees_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='has no train/ folder'):
    imagefolder.check_tree(str(tmp_path / 'missing'))
  root = make_tree(tmp_path / 'x', broken=False)
  os.rename(os.path.join(root, 'val', 'c'), os.path.join(root, 'val', 'd'))
  with pytest.raises(ValueError, match=r"differ: only in train \['c'\], only in val \['d'\]"):
    imagefolder.check_tree(root)
  os.makedirs(tmp_path / 'empty' / 'train' / 'a')
  os.makedirs(tmp_path / 'empty' / 'val' / 'a')
  with pytest.raises(FileNotFoundError, match='has no images'):
    imagefolder.ImageFolderSource(str(tmp_path / 'empty'), 'train')


def test_prepare_from_reference_layout(tmp_path):
  src = tmp_path / 'archive'
  for part, classes in (('train.X1', ['n1', 'n2']), ('train.X2', ['n3']), ('val.X', ['n1', 'n2', 'n3'])):
    for c in classes:
      _write(str(src / part / c / 'img.JPEG'), fmt='JPEG')
  counts = prepare_imagenet100.build(str(src), str(tmp_path / 'out'))
  assert counts == {'train': 3, 'val': 3}
  assert imagefolder.check_tree(str(tmp_path / 'out')) == ['n1', 'n2', 'n3']
  with pytest.raises(FileExistsError, match='exists'):
    prepare_imagenet100.build(str(src), str(tmp_path / 'out'))


def test_prepare_from_imagenet1k_takes_the_100_classes(tmp_path):
  wanted = prepare_imagenet100.class_list()
  assert len(wanted) == 100 and len(set(wanted)) == 100
  src = tmp_path / 'in1k'
  _write(str(src / 'train' / wanted[0] / 'x.JPEG'), fmt='JPEG')
  for split in ('train', 'val'):
    for wnid in wanted + ['n99999999']:
      os.makedirs(src / split / wnid, exist_ok=True)
      os.symlink(src / 'train' / wanted[0] / 'x.JPEG', src / split / wnid / f'{split}.JPEG')
  with pytest.raises(FileNotFoundError, match='neither'):
    prepare_imagenet100.build(str(tmp_path / 'nothing'), str(tmp_path / 'o1'))
  counts = prepare_imagenet100.build(str(src), str(tmp_path / 'out'))
  assert counts == {'train': 101, 'val': 100}
  assert imagefolder.check_tree(str(tmp_path / 'out')) == sorted(wanted)
  assert not os.path.exists(str(tmp_path / 'out.partial'))


def test_training_on_an_image_folder(tmp_path):
  root = make_tree(tmp_path / 'data', per_class=8)
  c = config_lib.load('vanilla', 'quick')
  c.dataset.update(name='imagenet100', data_dir=root, num_classes=3)
  c.model.update(depth=1, width=32, num_heads=2)
  c.update(batch_size=8, eval_batch_size=8, total_epochs=1)
  c.probe.num_images = 8
  row = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert row['epoch'] == 1 and 0.0 <= row['val_acc1'] <= 100.0
