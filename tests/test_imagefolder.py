"""ImageNet-style folders read through the real code path, from files made here."""
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from vit_jax import config_lib
from vit_jax.data import imagefolder
from vit_jax.data import pipeline
from vit_jax.data import prepare_imagenet100
from vit_jax.train import evaluation
from vit_jax.train import loop
from vit_jax.train import steps


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
  assert len(broken) == 1 and broken[0]['unreadable'].split(' (')[0].endswith('broken.jpg')
  for it in items:
    if it['image'] is not None:
      assert it['image'].ndim == 3 and it['image'].shape[2] == 3 and it['image'].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(src.labels), [5, 4, 4])


def test_train_stream_replaces_unreadable_within_the_batch_and_crops(tmp_path):
  root = make_tree(tmp_path)
  cfg = ml_collections.ConfigDict(dict(name='imagenet100', image_size=16, random_crop_padding=0,
                                       crop_padding_mode='reflect', repeated_aug=1))
  src = imagefolder.ImageFolderSource(root, 'train')                 # 13 files, 1 broken
  stream = pipeline.TrainStream(src, cfg, 6, seed=0)
  it = stream.batches(0)
  batches = [next(it) for _ in range(4)]                             # 2 epochs of 2 batches
  assert all(b['image'].shape == (6, 16, 16, 3) for b in batches)
  seen = [p for b in batches for p in b['unreadable']]
  # The broken file is in a batch when the epoch's 12 drawn keys include it; it comes back
  # as its path, once per batch that drew it, and its row holds another image of the batch.
  for b, s in zip(batches, range(4)):
    keys = stream.order.global_keys(s)
    broken = [k for k in keys if src[int(k)]['image'] is None]
    assert len(b['unreadable']) == len(broken)
  assert all(p.split(' (')[0].endswith('broken.jpg') for p in seen)


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
  with pytest.raises(ValueError, match=r"differ: only in train \['c'\] \(1\), only in val \['d'\]"):
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
  assert sorted(os.listdir(tmp_path)) == ['in1k', 'out']      # nothing written aside is left


def test_training_on_an_image_folder(tmp_path):
  root = make_tree(tmp_path / 'data', per_class=8)
  c = config_lib.load('vanilla', 'quick')
  c.dataset.update(name='imagenet100', data_dir=root, num_classes=3)
  c.model.update(depth=1, width=32, num_heads=2)
  c.update(batch_size=8, eval_batch_size=8, total_epochs=1)
  c.probe.num_images = 8
  row = loop.train_and_evaluate(c, str(tmp_path / 'run'))
  assert row['epoch'] == 1 and 0.0 <= row['val_acc1'] <= 100.0


# --- data that is almost right --------------------------------------------------------------

def _error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  return lines[0]


def _train_args(root, workdir, **more):
  flags = {'dataset.name': 'imagenet100', 'dataset.data_dir': root, 'dataset.num_classes': 3,
           'model.depth': 1, 'model.width': 32, 'model.num_heads': 2, 'batch_size': 8,
           'eval_batch_size': 8, 'total_epochs': 1, 'probe.num_images': 8} | more
  return (['--config', 'configs/vanilla.py:quick', '--workdir', str(workdir)] +
          [f'--config.{k}={v}' for k, v in flags.items()])


@pytest.mark.parametrize('damage,fragment', [
    ('flat_val', "holds 12 images directly, not in class folders (ILSVRC2012's flat val "
                 'layout); sort them with python -m vit_jax.data.prepare_imagenet100'),
    ('missing_class', "differ: only in train ['c'] (1), only in val [] (0); every class needs "
                      'both'),
    ('more_classes', 'holds 3 class folders but dataset.num_classes=2; point data_dir at a '
                     'tree of 2 classes, or set --config.dataset.num_classes=3'),
    ('fewer_classes', 'holds 3 class folders but dataset.num_classes=10'),
])
def test_an_almost_right_tree_is_one_line_before_any_work(tmp_path, damage, fragment):
  """A tree that does not fit the config (e.g. a full ImageNet-1k tree under a 100-class
  head) is refused before any work, with both counts."""
  from conftest import run_main
  root = make_tree(tmp_path / 'data', broken=False)
  val = os.path.join(root, 'val')
  if damage == 'flat_val':
    for cls in ('a', 'b', 'c'):
      for name in os.listdir(os.path.join(val, cls)):
        os.rename(os.path.join(val, cls, name), os.path.join(val, f'{cls}_{name}'))
      os.rmdir(os.path.join(val, cls))
  elif damage == 'missing_class':
    import shutil
    shutil.rmtree(os.path.join(val, 'c'))
  classes = {'more_classes': 2, 'fewer_classes': 10}.get(damage, 3)
  proc = run_main(_train_args(root, tmp_path / 'run', **{'dataset.num_classes': classes}),
                  timeout=120)
  assert fragment in _error_line(proc)
  assert not (tmp_path / 'run').exists()


def test_stray_files_are_passed_over(tmp_path):
  root = make_tree(tmp_path / 'data', broken=False)
  for folder in ('train', os.path.join('train', 'a'), 'val'):
    with open(os.path.join(root, folder, '.DS_Store'), 'wb') as f:
      f.write(b'\0\1')
  os.makedirs(os.path.join(root, 'train', '.ipynb_checkpoints'))
  with open(os.path.join(root, 'train', 'a', 'notes.txt'), 'w') as f:
    f.write('not an image')
  assert imagefolder.check_tree(root) == ['a', 'b', 'c']
  assert len(imagefolder.ImageFolderSource(root, 'train')) == 12


def test_unreadable_files_are_reported_once_per_epoch_and_evaluation_with_workers(tmp_path):
  """Broken files in train/ and val/, repeated augmentation drawing a file up to 3 times,
  2 loader processes: each epoch's line names exactly the broken files that epoch drew,
  each once; the evaluation's line names the val one once."""
  from conftest import run_main
  from vit_jax.data import samplers
  root = make_tree(tmp_path / 'data', per_class=8)           # train/a/broken.jpg
  for path in (('train', 'b', 'broken2.png'), ('train', 'c', 'broken3.png'),
               ('val', 'a', '0_broken.jpg')):
    with open(os.path.join(root, *path), 'wb') as f:
      f.write(b'truncated')
  proc = run_main(_train_args(root, tmp_path / 'run', batch_size=4, total_epochs=2,
                              **{'dataset.workers': 2, 'dataset.repeated_aug': 3}),
                  timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  src = imagefolder.ImageFolderSource(root, 'train')
  broken = {i: src.samples[i][0] for i in range(len(src)) if src[i]['image'] is None}
  order = samplers.BatchOrder(len(src), 4, seed=0, repeats=3)
  for epoch in (1, 2):
    steps = range((epoch - 1) * order.steps_per_epoch, epoch * order.steps_per_epoch)
    drawn = {int(k) for s in steps for k in order.global_keys(s)}
    want = sorted(broken[k] for k in drawn & set(broken))
    lines = [l for l in proc.stdout.splitlines() if l.startswith(f'epoch {epoch}: replaced')]
    if not want:
      assert not lines
      continue
    assert len(lines) == 1, proc.stdout
    named = [p.split(' (')[0] for p in lines[0].split(': ', 2)[2].split('; ')]
    assert named == want
  evaluation = [l for l in proc.stdout.splitlines() if l.startswith('evaluation: left out')]
  assert len(evaluation) == 2 and all('left out 1 ' in l and '0_broken.jpg' in l
                                      for l in evaluation)         # once per evaluation


def test_the_probe_batch_holds_no_padding(tmp_path):
  """Training's probe batch and the analysis's: one batch, passing over an unreadable file."""
  root = make_tree(tmp_path / 'data', broken=False)
  with open(os.path.join(root, 'val', 'a', '0_broken.jpg'), 'wb') as f:   # first in val/
    f.write(b'truncated')
  c = config_lib.load('vanilla', 'quick')
  c.dataset.update(name='imagenet100', data_dir=root, num_classes=3)
  c.model.update(depth=1, width=32, num_heads=2)
  c.probe.num_images = 8
  compiled = steps.CompiledSteps(c)
  src = imagefolder.ImageFolderSource(root, 'val')
  probe = np.asarray(evaluation.probe_batch(compiled, src))
  readable = [src[i]['image'] for i in range(len(src)) if src[i]['image'] is not None][:8]
  want = np.stack([pipeline.center_crop(im, 16, c.dataset.eval_crop_ratio) for im in readable])
  np.testing.assert_array_equal(probe, want)               # no black padding image
  # The analysis studies the same batch: the 8 first readable images, not 7 of the first 8.
  from vit_jax.analysis import run as analysis
  images, labels = analysis.probe_batch(c)
  np.testing.assert_array_equal(images, want)
  np.testing.assert_array_equal(labels, [src[i]['label'] for i in range(1, 9)])


def test_prepare_sorts_a_flat_val_by_its_label_file(tmp_path):
  wanted = prepare_imagenet100.class_list()[:100]
  src = tmp_path / 'ILSVRC2012'
  _write(str(src / 'train' / wanted[0] / 'x.JPEG'), fmt='JPEG')
  for wnid in wanted:
    os.makedirs(src / 'train' / wnid, exist_ok=True)
    if wnid != wanted[0]:
      os.symlink(src / 'train' / wanted[0] / 'x.JPEG', src / 'train' / wnid / 't.JPEG')
  os.makedirs(src / 'val')
  rows = ['ImageId,PredictionString']
  for i, wnid in enumerate(wanted + ['n99999999']):
    name = f'ILSVRC2012_val_{i + 1:08d}'
    os.symlink(src / 'train' / wanted[0] / 'x.JPEG', src / 'val' / f'{name}.JPEG')
    rows.append(f'{name},{wnid} 1 2 3 4')
  (src / 'val' / '.DS_Store').write_bytes(b'\0')
  labels = tmp_path / 'LOC_val_solution.csv'
  labels.write_text('\n'.join(rows) + '\n')
  from conftest import REPO
  import subprocess
  import sys
  run = lambda *a: subprocess.run([sys.executable, '-m', 'vit_jax.data.prepare_imagenet100',
                                   *a], cwd=REPO, capture_output=True, text=True, timeout=120)
  proc = run(f'--src={src}', f'--dst={tmp_path / "no_labels"}')       # flat val/, no labels
  assert 'give their classes with --val_labels' in _error_line(proc)
  assert not os.path.exists(tmp_path / 'no_labels') and not os.path.exists(
      tmp_path / 'no_labels.partial')
  proc = run(f'--src={src}', f'--dst={tmp_path / "out"}', f'--val_labels={labels}')
  assert proc.returncode == 0, proc.stderr
  assert 'wrote' in proc.stdout and '100 train and 100 val images' in proc.stdout
  assert imagefolder.check_tree(str(tmp_path / 'out')) == sorted(wanted)


def test_prepare_never_reports_success_on_a_tree_training_refuses(tmp_path):
  src = tmp_path / 'archive'
  for part, classes in (('train.X1', ['n1', 'n2']), ('val.X', ['n1'])):   # n2 has no val
    for c in classes:
      _write(str(src / part / c / 'img.JPEG'), fmt='JPEG')
  (src / 'train.X1' / '.DS_Store').write_bytes(b'\0')                    # and a stray file
  with pytest.raises(ValueError, match=r"only in train \['n2'\]"):
    prepare_imagenet100.build(str(src), str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'out.partial')
