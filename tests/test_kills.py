"""A run killed at any instant, run again, ends as if never stopped.

The instants are exact (vit_jax/train/faults.py): mid-epoch, while the epoch's checkpoint is
being written in the background, between metrics.csv written aside and put in place,
right after an epoch, and while the checkpoint a SIGTERM asks for is being written (SIGKILL,
and a second SIGTERM). After each, the same command runs again; at the end every epoch is in
metrics.csv once, with the values of an uninterrupted run (1e-6), and no mid-epoch
checkpoint is left.
"""
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
import tiny_run
from vit_jax.train import checkpoint

EXIT_PREEMPTED = 75
# 93 steps an epoch (tiny_run's 375 at batch 4 add time, not instants): every instant
# below still falls inside its epoch, far from the steps in flight (2) of an edge.
BATCH = {'batch_size': 16}
N = 1500 // BATCH['batch_size']


def _same_as_uninterrupted(workdir):
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(**BATCH))


def _run(workdir, fault=''):
  env = dict(os.environ, **tiny_run.ENV, VIT_JAX_FAULT=fault)
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *tiny_run.args(workdir, **BATCH)],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def _killed(proc):
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _mid_epoch(workdir) -> list[int]:
  """The saved steps (optimizer updates) that are not an epoch's end."""
  return [s for s in checkpoint.saved_steps(str(workdir / 'checkpoints')) if s % N]


def test_killed_at_five_instants_then_run_again_completes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  _killed(_run(workdir, f'step:{N // 3}'))                  # 1. mid-epoch 1, nothing saved
  _killed(_run(workdir, 'epoch_checkpoint:1'))              # 2. epoch 1's checkpoint half written
  _killed(_run(workdir, 'metrics:2'))                       # 3. epoch 2's row written aside
  _killed(_run(workdir, 'epoch_end:1'))                     # 4. right after an epoch's save began
  # 5. SIGTERM mid-epoch, then SIGKILL while the preemption checkpoint is being written.
  _killed(_run(workdir, f'step:{N // 2}:TERM,preempt_checkpoint:1'))
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  _same_as_uninterrupted(workdir)
  assert _mid_epoch(workdir) == []


def test_a_second_sigterm_while_the_preemption_checkpoint_is_written(tmp_path):
  workdir = tmp_path / 'run'
  first = _run(workdir, f'step:{N + N // 2}:TERM,preempt_checkpoint:1:TERM')
  assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
  saved = _mid_epoch(workdir)
  assert len(saved) == 1 and N < saved[0] < 2 * N          # written whole, inside epoch 2
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'resumed from {workdir}/checkpoints at step {saved[0]} (epoch 2, ' in done.stdout
  _same_as_uninterrupted(workdir)


def test_a_sigterm_outside_the_steps_stops_at_the_epoch_boundary(tmp_path):
  """SIGTERM while epoch 1's metrics are written (after its steps): the epoch finishes,
  its checkpoint is written, and the run exits 75 before epoch 2."""
  workdir = tmp_path / 'run'
  first = _run(workdir, 'metrics:1:TERM')
  assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
  assert f'preempted: SIGTERM at step {N}, before epoch 2 (outside the train steps)' in first.stderr
  assert checkpoint.saved_steps(str(workdir / 'checkpoints')) == [N]
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  _same_as_uninterrupted(workdir)


@pytest.mark.parametrize('config', ['deit_distill', 'teacher_resnet'])
def test_the_distillation_and_teacher_trainers_act_on_sigterm(tmp_path, config):
  """The DeiT student (with its frozen teacher in the step) and the ConvNet teacher stop
  at the step after a SIGTERM, write it, exit 75, and resume there."""
  from vit_jax import config_lib
  from vit_jax.train import steps
  workdir = tmp_path / 'run'
  extra = ['--config.batch_size=32', '--config.total_epochs=2']
  if config == 'deit_distill':                  # an untrained quick teacher, saved for real
    teacher = steps.CompiledSteps(config_lib.load('teacher_resnet', 'quick'))
    mngr = checkpoint.manager(str(tmp_path / 'teacher'), 1)
    checkpoint.save(mngr, 1, teacher.setup(steps_per_epoch=1), {'seed': 0}, {'val_acc1': 0.0})
    mngr.close()
    extra += [f'--config.teacher.checkpoint={tmp_path / "teacher"}']
  args = ['--config', f'configs/{config}.py:quick', '--workdir', str(workdir), *extra]
  env = dict(os.environ, **tiny_run.ENV, VIT_JAX_FAULT='step:50:TERM')   # 46 steps/epoch
  first = subprocess.run([sys.executable, '-m', 'vit_jax.main', *args], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=600)
  assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
  step = int(first.stderr.split('preempted: SIGTERM at step ')[1].split()[0])
  assert 50 <= step <= 50 + 3                   # within steps_in_flight (2) of the signal
  env['VIT_JAX_FAULT'] = ''
  done = subprocess.run([sys.executable, '-m', 'vit_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'at step {step}' in done.stdout


def test_a_checkpoint_written_per_epoch_before_steps_counted_updates_resumes_exactly(tmp_path):
  """A workdir as the loop left it before one checkpoint manager keyed by update: the step
  is the epoch, the state has no epoch_metrics, the metrics no 'epoch'. It resumes from it
  (not set aside as unreadable) and ends as an uninterrupted run."""
  from vit_jax.train import loop
  from vit_jax.train import steps
  c = tiny_run.config(batch_size=64)
  workdir, new = tmp_path / 'run', tmp_path / 'new'
  loop.train_and_evaluate(c, str(new), stop_after_epoch=1)
  n = tiny_run.STEPS_PER_EPOCH * tiny_run.OVERRIDES['batch_size'] // 64  # updates an epoch
  compiled = steps.CompiledSteps(c)
  compiled.setup(n)
  mngr = checkpoint.manager(str(new), 1)
  state, data = checkpoint.restore(mngr, n, compiled.abstract_state)
  mngr.close()
  old = checkpoint.manager(str(workdir), 1)
  checkpoint.save(old, 1, state.replace(epoch_metrics=None), data,
                  {'val_acc1': float(tiny_run.rows(new)[0]['val_acc1'])})
  old.close()
  os.replace(new / 'metrics.csv', workdir / 'metrics.csv')
  row = loop.train_and_evaluate(c, str(workdir))
  assert row['epoch'] == 2
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', str(2 * n)]   # none set aside
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(batch_size=64))
