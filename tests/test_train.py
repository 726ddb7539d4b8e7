"""Training end to end on the embedded digits: it learns, writes the workdir, resumes, shards."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
import tiny_run
from vit_jax import config_lib
from vit_jax.train import checkpoint
from vit_jax.train import loop
from vit_jax.train import metrics_io


def quick_config(**model):
  c = config_lib.load('vanilla', 'quick')
  c.model.update(model)
  return c


def read_rows(workdir):
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))


def test_quick_config_learns_and_writes_workdir(tmp_path):
  c = quick_config()
  c.total_epochs = 12
  workdir = str(tmp_path)
  last = loop.train_and_evaluate(c, workdir)
  assert last['val_acc1'] > 40.0          # 10 classes: chance is 10%
  rows = read_rows(workdir)
  assert [int(r['epoch']) for r in rows] == list(range(1, 13))
  assert tuple(rows[0]) == metrics_io.COLUMNS
  assert float(rows[-1]['val_acc1']) == pytest.approx(last['val_acc1'], rel=1e-6)
  assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['width'] == 64
  events = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  assert len(events) == 1
  # TensorBoard's own reader gives back every epoch's scalars as metrics.csv has them.
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  scalars = {}
  for event in event_file_loader.EventFileLoader(os.path.join(workdir, events[0])).Load():
    for v in event.summary.value:   # the loader gives scalars back as 0-d tensors
      scalars[(event.step, v.tag)] = float(tensor_util.make_ndarray(v.tensor))
  for r in rows:
    for k in ('train_loss', 'val_acc1', 'lr', 'l2_norm_mean'):
      assert scalars[(int(r['epoch']), k)] == pytest.approx(float(r[k]), rel=1e-6)
  kept = set(checkpoint.saved_epochs(os.path.join(workdir, 'checkpoints')))   # their epochs
  best = max(rows, key=lambda r: float(r['val_acc1']))['val_acc1']
  best_kept = [e for e in kept if rows[e - 1]['val_acc1'] == best]
  assert 12 in kept and 10 in kept and best_kept   # latest, every 10th, the best val_acc1
  assert len(kept) <= 3
  norms = np.load(os.path.join(workdir, 'l2_norms', 'epoch12.npy'))
  assert norms.shape == (32, 16) and (norms > 0).all()
  assert float(rows[-1]['l2_norm_mean']) == pytest.approx(norms.mean(), rel=1e-5)
  layer_norms = np.load(os.path.join(workdir, 'l2_norms', 'layers', 'epoch12.npy'))
  assert layer_norms.shape == (4, 32, 16) and (layer_norms > 0).all()


def test_resume_continues_exactly(tmp_path):
  c = quick_config(depth=2, width=32, num_heads=2)
  c.total_epochs = 3
  full = loop.train_and_evaluate(c, str(tmp_path / 'full'))
  loop.train_and_evaluate(c, str(tmp_path / 'cut'), stop_after_epoch=2)
  assert len(read_rows(tmp_path / 'cut')) == 2
  resumed = loop.train_and_evaluate(c, str(tmp_path / 'cut'))
  rows_full, rows_cut = read_rows(tmp_path / 'full'), read_rows(tmp_path / 'cut')
  assert [r['epoch'] for r in rows_cut] == ['1', '2', '3']
  for a, b in zip(rows_full, rows_cut):
    for key in ('train_loss', 'val_loss', 'val_acc1', 'l2_norm_mean'):
      assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), key
  assert resumed['val_loss'] == pytest.approx(full['val_loss'], abs=1e-6)


def test_sharded_step_equals_single_device():
  env = dict(os.environ, **tiny_run.ENV,   # ENV: the tests' compilation cache, CPU only
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'sharded_step.py'), REPO],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith('OK')


def test_training_imports_no_tensorflow(tmp_path):
  """TensorFlow (~3 s to import) is not needed to train on the embedded data or to write
  TensorBoard events; scikit-learn is not imported to read its digits either."""
  code = ('import sys; from vit_jax.train import loop, metrics_io; '
          'from vit_jax.data import sources; sources.digits("train", 16); '
          f'w = metrics_io.MetricWriter({str(tmp_path)!r}, True); '
          'w.write_scalars(1, {"a": 1.0}); '
          'w.close(); print(sorted(m for m in ("tensorflow", "clu", "sklearn") if m in sys.modules))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == '[]'
