"""A run with gradient accumulation, weight EMA and progress lines, stopped by SIGTERM
between two micro-steps of one update and run again, ends with params and EMA bit-identical
to an uninterrupted run's; its images/s counts only what each invocation trained, outside
compilation; trainer=evaluate gives back the epoch's val_acc1 (raw and EMA) and per-class /
top-5 accuracy equal to numpy's on the logits it saved."""
import contextlib
import io
import json
import os
import re

import jax
import numpy as np
import pytest

import tiny_run   # the shared on-disk compilation cache
from vit_jax import config_lib
from vit_jax.exits import Preempted
from vit_jax.train import checkpoint
from vit_jax.train import evaluate
from vit_jax.train import faults
from vit_jax.train import loop
from vit_jax.train import steps

K, BATCH, STOP = 2, 32, 83      # 46 updates = 92 micro-steps per epoch; 83 is mid-update
UPDATE = -(-STOP // K)          # the update under way when the signal came: finished, saved


def _config():
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=1, width=32, num_heads=2, drop_path_rate=0.0)
  c.update(batch_size=BATCH, grad_accum_steps=K, total_epochs=1, log_every_steps=10)
  c.optim.update(name='adamw', lr=2e-3, warmup_epochs=0.0)
  c.loss.update(name='softmax_xent', label_smoothing=0.0)
  c.ema.update(decay=0.9, warmup=True)
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(full workdir, its stdout, resumed workdir, the preemption checkpoint's step)."""
  base = tmp_path_factory.mktemp('features')
  full, cut = str(base / 'full'), str(base / 'cut')
  mp = pytest.MonkeyPatch()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    loop.train_and_evaluate(_config(), full)
  mp.setenv('VIT_JAX_FAULT', f'step:{STOP}:TERM')
  mp.setattr(faults, '_hits', {})
  # Counted in optimizer updates, as the header's steps/epoch (not 83 of 92 micro-steps).
  with pytest.raises(Preempted, match=rf'SIGTERM at step {UPDATE} \(epoch 1, {UPDATE} of 46 '
                     r'steps\); checkpoint written to '):
    loop.train_and_evaluate(_config(), cut)
  saved = checkpoint.saved_steps(os.path.join(cut, 'checkpoints'))
  mp.setenv('VIT_JAX_FAULT', '')
  loop.train_and_evaluate(_config(), cut)
  mp.undo()
  return full, out.getvalue(), cut, saved


def test_resume_between_micro_steps_is_bit_identical(runs):
  full, _, cut, saved = runs
  assert saved == [UPDATE] and STOP % K      # the signal came with the accumulator half full
  for weights in ('raw', 'ema'):
    a = checkpoint.restore_params(checkpoint.epoch_dir(full, 1), weights)
    b = checkpoint.restore_params(checkpoint.epoch_dir(cut, 1), weights)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  raw = checkpoint.restore_params(checkpoint.epoch_dir(full, 1))
  ema = checkpoint.restore_params(checkpoint.epoch_dir(full, 1), 'ema')
  assert any(np.abs(x - y).max() > 1e-4 for x, y in zip(jax.tree.leaves(raw), jax.tree.leaves(ema)))
  rows_full, rows_cut = tiny_run.rows(full), tiny_run.rows(cut)
  for key in ('train_loss', 'train_acc1', 'val_acc1', 'val_loss', 'val_acc1_ema', 'val_loss_ema'):
    assert rows_full[0][key] == rows_cut[0][key], key
  # images/s: the images of the timed steps over their time, in the invocation that ends
  # the epoch (the resumed one: 3 timed updates). A host that ran ahead of the device
  # (dispatch time only) read ~4x too high here.
  speed_full, speed_cut = float(rows_full[0]['images_per_s']), float(rows_cut[0]['images_per_s'])
  assert speed_full / 3 < speed_cut < speed_full * 3, (speed_full, speed_cut)
  assert float(rows_cut[0]['compile_s']) > 0 and float(rows_cut[0]['device_hours']) > 0
  assert 0 <= float(rows_full[0]['train_acc1']) <= 100
  # raw and EMA weights score differently: evaluating the wrong ones would show below.
  assert rows_full[0]['val_acc1'] != rows_full[0]['val_acc1_ema']


def test_progress_lines_and_per_step_scalars(runs):
  full, out, _, _ = runs
  lines = [l for l in out.splitlines() if l.startswith('step ')]
  # Counted in optimizer updates (46 per epoch), not micro-steps (92): 'step 10/46 | epoch 1
  # 10/46 (22%)'.
  assert [re.match(r'step (\d+)/46 \| epoch 1 (\d+)/46 \((\d+)%\)', l).groups() for l in lines] \
      == [(str(s), str(s), str(round(100 * s / 46))) for s in (10, 20, 30, 40)]
  assert all(re.search(r'grad norm [\d.]+ \| \d+ img/s \| ETA epoch \d+:\d\d:\d\d run ', l)
             for l in lines), lines
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  events = [f for f in os.listdir(full) if f.startswith('events.out.tfevents')]
  got = {}
  for e in event_file_loader.EventFileLoader(os.path.join(full, events[0])).Load():
    for v in e.summary.value:
      got[(e.step, v.tag)] = float(tensor_util.make_ndarray(v.tensor))
  for step in (10, 20, 30, 40):
    for tag in ('step/loss', 'step/lr', 'step/grad_norm', 'step/images_per_s'):
      assert (step, tag) in got
    line = lines[step // 10 - 1]
    assert f"loss {got[(step, 'step/loss')]:.4f}" in line


def _eval_config(**kw):
  c = _config()
  c.trainer = 'evaluate'
  c.evaluate.update(kw)
  return c


def test_evaluate_a_checkpoint(runs):
  full = runs[0]
  row = tiny_run.rows(full)[0]
  for weights, column in (('raw', 'val_acc1'), ('ema', 'val_acc1_ema')):
    result = evaluate.evaluate(_eval_config(checkpoint='1', weights=weights), full)
    assert result['acc1'] == pytest.approx(float(row[column]), rel=1e-6, abs=1e-6)
    stem = os.path.join(full, f'evaluate_val_1_{weights}')
    assert json.load(open(stem + '.json'))['acc1'] == result['acc1']
  saved = np.load(stem + '.npz')      # the EMA's: recompute from the logits with numpy
  logits, labels = saved['logits'], saved['labels']
  order = np.argsort(-logits, axis=1)
  top1, top5 = order[:, 0] == labels, (order[:, :5] == labels[:, None]).any(1)
  assert result['acc5'] == pytest.approx(100 * top5.mean(), abs=1e-9)
  for c in range(10):
    assert result['per_class_acc1'][c] == pytest.approx(100 * top1[labels == c].mean(), abs=1e-9)
  assert result['per_class_count'] == np.bincount(labels, minlength=10).tolist()


def test_evaluate_refuses_bad_requests_in_one_line(runs, tmp_path):
  full = runs[0]
  with pytest.raises(FileNotFoundError, match='has no checkpoint in checkpoints/'):
    evaluate.check(_eval_config(), str(tmp_path))
  with pytest.raises(ValueError, match=r"evaluate.checkpoint='7': no such checkpoint .*saved "
                     r"epochs: 1 \(or 'latest', 'best'\)$"):
    evaluate.check(_eval_config(checkpoint='7'), full)
  with pytest.raises(ValueError, match=r"evaluate.split='test' is not one of \('val', 'train'\)"):
    evaluate.check(_eval_config(split='test'), full)
  c = _config()
  c.ema.decay = 0.0     # a run without EMA: its checkpoint has none
  mngr = checkpoint.manager(str(tmp_path / 'plain'), 1)
  checkpoint.save(mngr, 1, steps.CompiledSteps(c).setup(steps_per_epoch=1), {'seed': 0},
                  {'val_acc1': 0.0})
  mngr.close()
  with pytest.raises(ValueError, match=r"evaluate.weights='ema' but checkpoint .* holds no EMA "
                     r"weights \(its run had config.ema.decay=0\); use 'raw'$"):
    evaluate.check(_eval_config(weights='ema'), str(tmp_path / 'plain'))
  # Resuming that workdir with EMA on, or without accumulation, is refused before any work
  # (orbax would fail deep in the restore: the saved state has another structure).
  from vit_jax.train import resume
  with pytest.raises(ValueError, match=r"cannot resume with ema.decay=0.9: its checkpoint "
                     r"\(checkpoints step 1\) holds no EMA weights; use the setting"):
    resume.check_checkpoint(_config(), str(tmp_path / 'plain'))
  c.grad_accum_steps = 1
  with pytest.raises(ValueError, match=r"cannot resume with grad_accum_steps=1: its checkpoint "
                     r"\(checkpoints step 1\) holds a gradient accumulator; use the setting"):
    resume.check_checkpoint(c, str(tmp_path / 'plain'))
