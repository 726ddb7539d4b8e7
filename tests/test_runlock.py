"""One live run per workdir (vit_jax/runlock.py): two concurrent runs, a stale lock, a lock
from another host, and the lock's own rules."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_main, wait_until_stopped
import tiny_run
from vit_jax import runlock
from vit_jax.train import loop

EXIT_ERROR = 2
# For runs whose length is not the point (only the first run of the concurrent pair must
# live long enough to be found): 23 steps an epoch instead of tiny_run's 375.
SHORT = {'batch_size': 64}


def _dead_pid() -> int:
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **info):
  os.makedirs(workdir, exist_ok=True)
  now = time.time()
  full = dict(host=socket.gethostname(), pid=_dead_pid(), proc_start=None, started=now,
              renewed=now) | info
  with open(os.path.join(workdir, runlock.LOCK), 'w') as f:
    json.dump(full, f)
  return full


def _listing(workdir):
  return sorted(os.path.relpath(os.path.join(r, f), workdir)
                for r, _, files in os.walk(workdir) for f in files)


def test_a_second_run_is_refused_while_the_first_lives(tmp_path):
  workdir = tmp_path / 'run'
  # The first run stops itself at its 100th update (past taking the lock), so it is alive
  # whatever the machine's speed while the second tries, and goes on after.
  first = subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *tiny_run.args(workdir)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, **tiny_run.ENV, VIT_JAX_FAULT='step:100:STOP'))
  wait_until_stopped(first.pid, first)
  lock = workdir / runlock.LOCK
  owner = json.loads(lock.read_text())
  assert owner['pid'] == first.pid and owner['host'] == socket.gethostname()

  second = run_main(tiny_run.args(workdir), env=tiny_run.ENV, timeout=120)
  lines = second.stderr.strip().splitlines()
  assert second.returncode == EXIT_ERROR and len(lines) == 1, second.stderr
  assert f'pid {first.pid} on host {socket.gethostname()}' in lines[0]
  assert lines[0].startswith(f"error: workdir '{workdir}' is in use by a live run")

  first.send_signal(signal.SIGCONT)
  out, _ = first.communicate(timeout=600)          # the first is unaffected
  assert first.returncode == 0, out[-3000:]
  tiny_run.assert_same_metrics(tiny_run.rows(workdir))
  assert not lock.exists()                          # given back at the end


def test_a_dead_runs_lock_is_taken_over_with_one_warning(tmp_path):
  workdir = tmp_path / 'run'
  stale = _write_lock(workdir, started=time.time() - 3600)
  proc = run_main(tiny_run.args(workdir, total_epochs=1, **SHORT), env=tiny_run.ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines() if l.startswith('warning:')]
  assert len(warnings) == 1, proc.stderr
  assert warnings[0].startswith(f"warning: taking over workdir '{workdir}' from a run that is "
                                f"gone: pid {stale['pid']} on host {socket.gethostname()}")
  assert not (workdir / runlock.LOCK).exists()


@pytest.mark.parametrize('age_s,refused', [(10.0, True), (3600.0, False)])
def test_a_lock_from_another_host_is_kept_while_its_lease_is_renewed(tmp_path, age_s, refused):
  workdir = tmp_path / 'run'
  _write_lock(workdir, host='gpu-node-17', pid=4242, renewed=time.time() - age_s)
  before = _listing(workdir)
  proc = run_main(tiny_run.args(workdir, total_epochs=1, **SHORT), env=tiny_run.ENV)
  if refused:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_ERROR and len(lines) == 1, proc.stderr
    assert re.search(r'pid 4242 on host gpu-node-17 \(started .* UTC, lease renewed \d+ s ago\)',
                     lines[0]), lines[0]
    assert _listing(workdir) == before                # nothing touched
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'taking over' in proc.stderr and 'gpu-node-17' in proc.stderr


def test_lock_rules(tmp_path):
  workdir = str(tmp_path)
  with runlock.RunLock(workdir, lease_s=60.0, renew_s=0.05) as lock:
    info = runlock.read(workdir)
    assert info['pid'] == os.getpid() and runlock.alive(info, 60.0)
    with pytest.raises(runlock.Locked, match=f'pid {os.getpid()} on host'):
      runlock.check(workdir, 60.0)
    with pytest.raises(runlock.Locked):
      runlock.RunLock(workdir, 300.0, 60.0).acquire()
    time.sleep(0.3)                                   # the lease is renewed meanwhile
    assert runlock.read(workdir)['renewed'] > info['renewed']
    lock._stop.set()                                  # hold the renewal still to compare
    lock._thread.join()
    assert lock.info == runlock.read(workdir)
  assert runlock.read(workdir) is None
  # A reused pid is not the same run: same pid, another start time.
  assert not runlock.alive(dict(host=socket.gethostname(), pid=os.getpid(),
                                proc_start='1', started=0, renewed=0), 60.0)
  assert not runlock.alive({}, 60.0)                   # an unreadable lock counts as gone
  # The analysis only reads: it does not need (or take) the lock.
  _write_lock(workdir, pid=os.getpid(), proc_start=runlock._proc_start(os.getpid()))
  runlock.check(workdir + '/elsewhere', 60.0)


def test_an_unreadable_step_that_cannot_be_set_aside_is_skipped(tmp_path, monkeypatch, capsys):
  """The step vanishes (or cannot be renamed) between the failed read and the rename."""
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_run.config(**SHORT), workdir, stop_after_epoch=2)
  n = tiny_run.STEPS_PER_EPOCH * tiny_run.OVERRIDES['batch_size'] // SHORT['batch_size']  # updates
  data = os.path.join(workdir, 'checkpoints', str(2 * n), 'state', 'd')
  for name in os.listdir(data):
    os.truncate(os.path.join(data, name), 0)
  real_rename = os.rename

  def failing_rename(src, dst, *a, **k):
    if str(src).endswith(os.path.join('checkpoints', str(2 * n))):
      raise FileNotFoundError(2, 'No such file or directory', src)
    return real_rename(src, dst, *a, **k)
  monkeypatch.setattr(os, 'rename', failing_rename)
  capsys.readouterr()
  row = loop.train_and_evaluate(tiny_run.config(total_epochs=1, **SHORT), workdir)
  err = capsys.readouterr().err
  assert f'checkpoint step {2 * n}' in err and f'falling back to step {n}' in err
  assert f'could not set checkpoint step {2 * n} aside (No such file or directory' in err
  assert row == {} or row['epoch'] == 1


def test_a_full_disk_at_the_start_is_one_line_and_leaves_no_file(tmp_path):
  """The lock cannot be written (ENOSPC): one `error:` line, exit 2 (a retry would meet the
  same disk), and neither the lock nor the file written aside is left behind."""
  workdir = tmp_path / 'run'
  proc = subprocess.run([sys.executable, 'tests/full_disk.py', runlock.LOCK, '-m',
                         'vit_jax.main', *tiny_run.args(workdir)], cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, **tiny_run.ENV),
                        timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == EXIT_ERROR and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f'error: could not write the run lock {workdir}/run.lock (No space '
                             'left on device)'), lines[0]
  assert _listing(workdir) == []
