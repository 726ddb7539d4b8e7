"""Faults a long run meets, each against an uninterrupted run of the same config.

SIGKILL, SIGTERM, a corrupt checkpoint, non-finite steps, an incompatible
resume, a workdir that cannot be written and a disk that fills up.
"""
import asyncio
import errno
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

from conftest import REPO, run_main, snapshot, wait_until_stopped
import tiny_run
from vit_jax.train import checkpoint
from vit_jax.train import loop
from vit_jax.train import resume

EXIT_ERROR, EXIT_PREEMPTED = 2, 75
# Where no stop falls inside an epoch (the faults at a checkpoint, a resume, a step named
# by its number), 23 steps an epoch instead of tiny_run's 375.
WHOLE = {'batch_size': 64}
# Checkpoint steps count optimizer updates: an epoch of WHOLE's runs is this many.
WHOLE_STEPS = tiny_run.STEPS_PER_EPOCH * tiny_run.OVERRIDES['batch_size'] // WHOLE['batch_size']


def _start(cmd, env=None):
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, **tiny_run.ENV, **(env or {})))


def test_sigkill_mid_epoch_then_autorestart_completes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  # The restarted trainer resumes at epoch 2 and makes fewer updates than the fault counts.
  proc = _start(['bash', 'launch/autorestart.sh', sys.executable, '-m', 'vit_jax.main',
                 *tiny_run.args(workdir)],
                env={'BACKOFF_S': '1',
                     'VIT_JAX_FAULT': f'step:{tiny_run.STEPS_PER_EPOCH + 100}:STOP'})
  first = proc.stdout.readline()
  assert first.startswith('autorestart: started pid'), first
  child = int(first.split()[3].rstrip(':'))
  wait_until_stopped(child, proc)             # 100 updates into epoch 2, by VIT_JAX_FAULT
  os.kill(child, signal.SIGKILL)               # the trainer, not the wrapper
  assert [r['epoch'] for r in tiny_run.rows(workdir)] == ['1']   # epoch 2 was cut short
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert 'exit code 137; retry 1/10 in 1s' in out
  assert 'resumed from' in out and 'at epoch 1' in out
  tiny_run.assert_same_metrics(tiny_run.rows(workdir))   # each epoch once, same values


def test_sigterm_checkpoints_mid_epoch_exits_75_and_resumes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  n = tiny_run.STEPS_PER_EPOCH
  # The trainer stops itself 100 updates into epoch 2 (a sleep after epoch 1's checkpoint
  # was a race: on a fast machine epoch 2 ended first); the SIGTERM comes from outside.
  proc = _start(['bash', 'launch/local.sh', *tiny_run.args(workdir)[4:]],
                env={'CONFIG': 'configs/vanilla.py:quick', 'WORKDIR': str(workdir),
                     'PYTHON': sys.executable, 'VIT_JAX_FAULT': f'step:{n + 100}:STOP'})
  wait_until_stopped(proc.pid, proc)          # local.sh execs: this is the trainer
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGCONT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
  assert 'preempted: SIGTERM at step' in out and 'run the same command to resume' in out
  saved = [s for s in checkpoint.saved_steps(str(workdir / 'checkpoints')) if s % n]
  assert len(saved) == 1
  step = saved[0]
  assert n < step < 2 * n                      # inside epoch 2
  assert [r['epoch'] for r in tiny_run.rows(workdir)] == ['1']

  loop.train_and_evaluate(tiny_run.config(), str(workdir))
  tiny_run.assert_same_metrics(tiny_run.rows(workdir))
  assert checkpoint.saved_steps(str(workdir / 'checkpoints')) == [n, 2 * n]   # none mid-epoch


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir, stop_after_epoch=2)
  ckpt, n = os.path.join(workdir, 'checkpoints'), WHOLE_STEPS
  data = os.path.join(ckpt, str(2 * n), 'state', 'd')
  for name in os.listdir(data):                # truncated array files
    path = os.path.join(data, name)
    os.truncate(path, os.path.getsize(path) // 2)
  os.makedirs(os.path.join(ckpt, '3.orbax-checkpoint-tmp-1234', 'state'))   # an unfinished save
  capsys.readouterr()

  loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir)
  err = capsys.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith('warning:')]
  assert len(warnings) == 1 and f'step {2 * n}' in warnings[0]
  assert f'falling back to step {n}' in warnings[0]
  assert os.path.isdir(os.path.join(ckpt, f'{2 * n}.unreadable'))
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(**WHOLE))


def test_nonfinite_step_stops_naming_it_and_keeps_the_last_checkpoint(tmp_path):
  c = tiny_run.config(**WHOLE)
  workdir = str(tmp_path)
  loop.train_and_evaluate(c, workdir, stop_after_epoch=1)
  before = snapshot(workdir)

  c.optim.update(lr=1e30, warmup_lr=1e30)      # the first update overflows the params
  n = 1500 // WHOLE['batch_size']
  with pytest.raises(FloatingPointError, match=r'non-finite loss or gradient at step \d+ ') as e:
    loop.train_and_evaluate(c, workdir)
  step = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  assert n < step < 2 * n                      # in epoch 2, after the overflowing update
  assert snapshot(workdir)['metrics.csv'] == before['metrics.csv']
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(n)]   # epoch 1's

  # Resuming with another model shape: refused before anything is written.
  c.model.width = 48
  with pytest.raises(ValueError, match='holds a checkpoint of a different model.*in the checkpoint'):
    resume.check_checkpoint(c, workdir)


def test_incompatible_resume_is_one_line_and_touches_nothing(tmp_path):
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(tiny_run.config(**WHOLE), str(workdir), stop_after_epoch=1)
  before = snapshot(workdir)
  proc = run_main(tiny_run.args(workdir, **WHOLE, **{'model.width': 48}), env=tiny_run.ENV)
  assert proc.returncode == EXIT_ERROR
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'different model' in lines[0]
  assert "48" in lines[0].split("in the checkpoint")[1]   # the config's shape
  assert snapshot(workdir) == before


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
  n = WHOLE_STEPS                                     # checkpoint steps count updates
  with pytest.raises(OSError, match=rf'could not write checkpoint step {2 * n} .*No space left '
                     rf'on device.*step {n} in .* is intact'):
    loop.train_and_evaluate(tiny_run.config(**WHOLE), workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(n)]

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


def test_full_disk_at_a_save_is_one_line_from_the_cli(tmp_path):
  """Every write into epoch 2's checkpoint fails as on a full disk (tests/full_disk.py): the
  run's whole stderr is the one line naming the step and what is intact (not orbax's
  hundreds of lines of tracebacks from its threads), exit 2, no half-written folder."""
  workdir = tmp_path / 'run'
  proc = subprocess.run([sys.executable, 'tests/full_disk.py', 'checkpoints/46.orbax', '-m',
                         'vit_jax.main', *tiny_run.args(workdir, batch_size=64)], cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, **tiny_run.ENV),
                        timeout=600)
  assert proc.returncode == EXIT_ERROR, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == [
      f'error: could not write checkpoint step 46 to {workdir}/checkpoints (No space left on '
      f'device); step 23 in {workdir}/checkpoints is intact'], proc.stderr[-3000:]
  assert os.listdir(workdir / 'checkpoints') == ['23']


def test_a_sigterm_during_the_start_up_exits_75_in_one_line(tmp_path):
  """SIGTERM after the checks, before any work (faults point 'start'): the preemption exit,
  one line, nothing trained, the lock given back; the same command then runs."""
  workdir = tmp_path / 'run'
  args = tiny_run.args(workdir, batch_size=64, total_epochs=1)
  proc = run_main(args, env=dict(tiny_run.ENV, VIT_JAX_FAULT='start:1:TERM'))
  assert proc.returncode == EXIT_PREEMPTED, (proc.returncode, proc.stderr[-3000:])
  assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]]
  assert proc.stderr.startswith('preempted: SIGTERM during the start-up, before any work; ')
  assert not (workdir / 'checkpoints').exists() and not (workdir / 'run.lock').exists()
  assert run_main(args, env=tiny_run.ENV).returncode == 0
