"""Faults a long run meets, each against an uninterrupted run of the same config.

SIGKILL, SIGTERM, a corrupt checkpoint, non-finite steps, an incompatible
resume, a workdir that cannot be written and a disk that fills up.
"""
import asyncio
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, run_main
import tiny_run
from vit_jax import models
from vit_jax import preflight
from vit_jax.train import checkpoint
from vit_jax.train import loop

EXIT_ERROR, EXIT_PREEMPTED = 2, 75
# Where no stop falls inside an epoch (the faults at a checkpoint, a resume, a step named
# by its number), 23 steps an epoch instead of tiny_run's 375.
WHOLE = {'batch_size': 64}


def _start(cmd, env=None):
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, **tiny_run.ENV, **(env or {})))


def _wait_for(path, proc, timeout=300):
  """Until `path` exists (a finished checkpoint step is renamed into place)."""
  end = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < end, f'{path} never appeared'
    time.sleep(0.05)


def _snapshot(workdir) -> dict:
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return out


def test_sigkill_mid_epoch_then_autorestart_completes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(['bash', 'launch/autorestart.sh', sys.executable, '-m', 'vit_jax.main',
                 *tiny_run.args(workdir)], env={'BACKOFF_S': '1'})
  first = proc.stdout.readline()
  assert first.startswith('autorestart: started pid'), first
  child = int(first.split()[3].rstrip(':'))
  _wait_for(workdir / 'checkpoints' / '1', proc)
  os.kill(child, signal.SIGKILL)               # the trainer, not the wrapper
  assert [r['epoch'] for r in tiny_run.rows(workdir)] == ['1']   # epoch 2 was cut short
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert 'exit code 137; retry 1/10 in 1s' in out
  assert 'resumed from' in out and 'at epoch 1' in out
  tiny_run.assert_same_metrics(tiny_run.rows(workdir))   # each epoch once, same values


def test_sigterm_checkpoints_mid_epoch_exits_75_and_resumes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(['bash', 'launch/local.sh', *tiny_run.args(workdir)[4:]],
                env={'CONFIG': 'configs/vanilla.py:quick', 'WORKDIR': str(workdir),
                     'PYTHON': sys.executable})
  _wait_for(workdir / 'checkpoints' / '1', proc)
  time.sleep(0.3)
  proc.send_signal(signal.SIGTERM)             # local.sh execs: this is the trainer
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
  assert 'preempted: SIGTERM at step' in out and 'run the same command to resume' in out
  saved = os.listdir(workdir / 'checkpoints' / checkpoint.PREEMPTED)
  assert len(saved) == 1
  step = int(saved[0])
  assert tiny_run.STEPS_PER_EPOCH < step < 2 * tiny_run.STEPS_PER_EPOCH   # inside epoch 2
  assert [r['epoch'] for r in tiny_run.rows(workdir)] == ['1']

  loop.train_and_evaluate(tiny_run.config(), str(workdir))
  tiny_run.assert_same_metrics(tiny_run.rows(workdir))
  assert os.listdir(workdir / 'checkpoints' / checkpoint.PREEMPTED) == []


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir, stop_after_epoch=2)
  ckpt = os.path.join(workdir, 'checkpoints')
  data = os.path.join(ckpt, '2', 'state', 'd')
  for name in os.listdir(data):                # truncated array files
    path = os.path.join(data, name)
    os.truncate(path, os.path.getsize(path) // 2)
  os.makedirs(os.path.join(ckpt, '3.orbax-checkpoint-tmp-1234', 'state'))   # an unfinished save
  capsys.readouterr()

  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir)
  err = capsys.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith('warning:')]
  assert len(warnings) == 1 and 'step 2' in warnings[0] and 'falling back to step 1' in warnings[0]
  assert os.path.isdir(os.path.join(ckpt, '2.unreadable'))
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(**WHOLE))


def test_nonfinite_step_stops_naming_it_and_keeps_the_last_checkpoint(tmp_path):
  c = tiny_run.config(**WHOLE)
  workdir = str(tmp_path)
  loop.train_and_evaluate(c, workdir, stop_after_epoch=1)
  before = _snapshot(workdir)

  c.optim.update(lr=1e30, warmup_lr=1e30)      # the first update overflows the params
  n = 1500 // WHOLE['batch_size']
  with pytest.raises(FloatingPointError, match=r'non-finite loss or gradient at step \d+ ') as e:
    loop.train_and_evaluate(c, workdir)
  step = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  assert n < step < 2 * n                      # in epoch 2, after the overflowing update
  assert _snapshot(workdir)['metrics.csv'] == before['metrics.csv']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', checkpoint.PREEMPTED]

  # Resuming with another model shape: refused before anything is written.
  c.model.width = 48
  with pytest.raises(ValueError, match='holds a checkpoint of a different model.*in the checkpoint'):
    preflight.check_resume(c, workdir, models.build_model(c.model, 10))


def test_incompatible_resume_is_one_line_and_touches_nothing(tmp_path):
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(tiny_run.config(**WHOLE), str(workdir), stop_after_epoch=1)
  before = _snapshot(workdir)
  proc = run_main(tiny_run.args(workdir, **WHOLE, **{'model.width': 48}), env=tiny_run.ENV)
  assert proc.returncode == EXIT_ERROR
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'different model' in lines[0]
  assert "48" in lines[0].split("in the checkpoint")[1]   # the config's shape
  assert _snapshot(workdir) == before


@pytest.fixture
def read_only_dir(tmp_path):
  """A folder no one can create files in: mode 555, and immutable for root, who ignores modes."""
  path = tmp_path / 'ro'
  path.mkdir()
  path.chmod(0o555)
  if os.geteuid() == 0:
    if subprocess.run(['chattr', '+i', str(path)], capture_output=True).returncode:
      pytest.skip('running as root without chattr: cannot make a folder read-only')
  yield path
  if os.geteuid() == 0:
    subprocess.run(['chattr', '-i', str(path)])
  path.chmod(0o755)


def test_unwritable_workdir_is_one_line_before_any_work(read_only_dir):
  proc = run_main(tiny_run.args(read_only_dir / 'run'), env=tiny_run.ENV)
  assert proc.returncode == EXIT_ERROR
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert f"'{read_only_dir}' is not writable" in lines[0]
  assert 'model:' not in proc.stdout


def test_full_disk_at_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir, stop_after_epoch=1)
  handler = ocp.handlers.JsonCheckpointHandler       # writes the data item of every step
  real_save = handler.async_save

  def full_disk(self, directory, *args, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'metadata').write_text('{"half')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(handler, 'async_save', full_disk)
  with pytest.raises(OSError, match=r'could not write checkpoint step 2 .*No space left on device'
                     r'.*step 1 in .* is intact'):
    loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', checkpoint.PREEMPTED]

  monkeypatch.setattr(handler, 'async_save', real_save)
  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir)   # the disk has room again
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(**WHOLE))


def _orbax_threads(before) -> list:
  return [t for t in threading.enumerate() if t not in before and t.is_alive()
          and type(t).__module__.startswith('orbax.')]


@pytest.mark.parametrize('where', ['mkdir', 'item', 'write'])
def test_full_disk_leaves_no_writer_thread_and_no_tmp_folder(tmp_path, monkeypatch, where):
  """A full disk at the step folder's mkdir (what a real one hits first), at an item's
  save, or in one writer thread while another is still writing: one OSError, no orbax
  thread left waiting (they held the interpreter 300 s after the tests) and no
  *.orbax-checkpoint-tmp folder (a writer still going re-made it after the cleanup)."""
  mngr = checkpoint.manager(str(tmp_path), 1)
  state = {'w': jnp.arange(16.0).reshape(4, 4)}
  checkpoint.save(mngr, 1, state, {'seed': 0}, {'val_acc1': 1.0})
  enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  if where == 'mkdir':
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
      if '2.orbax-checkpoint-tmp' in os.fspath(path):
        raise enospc
      return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, 'mkdir', mkdir)
  elif where == 'item':
    def full_disk(self, directory, *args, **kwargs):
      directory.mkdir(parents=True, exist_ok=True)
      (directory / 'metadata').write_text('{"half')
      raise enospc
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, 'async_save', full_disk)
  else:   # the data item's writer fails at once; the metrics one is still busy, and, as
    # tensorstore does for the arrays, makes the folders it writes to
    async def write(self, x, directory):
      if directory.name.startswith('data'):
        raise enospc
      await asyncio.sleep(0.5)
      os.makedirs(directory, exist_ok=True)
      (directory / self._filename).write_text(json.dumps(x))
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, '_save_fn', write)
  before = set(threading.enumerate())
  with pytest.raises(OSError, match=r'step 2 .*No space left on device.*step 1 in .* intact'):
    checkpoint.save(mngr, 2, state, {'seed': 0}, {'val_acc1': 2.0})
  monkeypatch.undo()
  time.sleep(1.0)    # room for a writer that would still re-make the folder
  assert _orbax_threads(before) == []
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  mngr.close()
