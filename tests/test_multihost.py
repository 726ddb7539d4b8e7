"""Several processes on JAX's multi-process runtime (CPU collectives over localhost)."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_main
import tiny_run
from vit_jax import exits
from vit_jax.train import checkpoint


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _dist(address, n, i, timeout=120):
  return {'distributed.coordinator_address': address, 'distributed.num_processes': n,
          'distributed.process_id': i, 'distributed.init_timeout_s': timeout}


def _launch(workdir, n, envs=None, **more):
  """n processes of one run (envs: extra environment per process); returns their
  (returncode, output) in process order."""
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'vit_jax.main',
       *tiny_run.args(workdir, **_dist(address, n, i), **more)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, **tiny_run.ENV, **(envs[i] if envs else {}))) for i in range(n)]
  return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


BATCH = 64   # global: 32 rows per process, 23 steps per epoch


def test_two_processes_train_like_one_and_resume_across_processes(tmp_path):
  workdir = tmp_path / 'run'
  # A run of 2 epochs (schedule_epochs) whose first launch stops after epoch 1; the second
  # launch restores its checkpoint.
  for total in (1, 2):
    results = _launch(workdir, 2, total_epochs=total, schedule_epochs=2, batch_size=BATCH)
    for rc, out in results:
      assert rc == 0, out[-3000:]
    assert ('resumed from' in results[0][1]) == (total == 2)
  assert 'on 2 device(s)' in results[0][1]
  saved = json.loads(open(os.path.join(checkpoint.epoch_dir(str(workdir), 2), 'data',
                                       'metadata')).read())
  assert saved == dict(num_records=1500, global_batch=BATCH, seed=0, repeats=1)
  rows = tiny_run.rows(workdir)
  reference = tiny_run.reference(batch_size=BATCH)
  tiny_run.assert_same_metrics(rows, reference, tol=1e-5)
  diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(rows, reference)
             for k in ('train_loss', 'val_loss'))
  print(f'2 processes vs 1: max loss difference {diff:.2e}')


@pytest.mark.parametrize('first,then', [('4 devices', '1 process'), ('1 process', '2 processes'),
                                        ('2 processes', '1 process')])
def test_a_checkpoint_resumes_on_another_topology(tmp_path, first, then):
  """Epoch 1 on one topology, epoch 2 on another: the train state is restored into the new
  mesh and the data stream resumes at the saved step (its order depends on neither the
  device nor the process count), so both epochs equal an uninterrupted one-process run's
  (within 1e-5: data-parallel sums over other device counts round differently)."""
  workdir = tmp_path / 'run'
  for topology, total in ((first, 1), (then, 2)):   # a 2-epoch schedule, in two launches
    if topology.endswith('processes'):
      results = _launch(workdir, int(topology[0]), total_epochs=total, schedule_epochs=2,
                        batch_size=BATCH)
    else:
      env = dict(tiny_run.ENV)
      if topology == '4 devices':
        env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      proc = run_main(tiny_run.args(workdir, total_epochs=total, schedule_epochs=2,
                                    batch_size=BATCH), env=env)
      results = [(proc.returncode, proc.stdout + proc.stderr)]
    for rc, out in results:
      assert rc == 0, out[-3000:]
    devices = {'4 devices': 4, '1 process': 1, '2 processes': 2}[topology]
    assert f'on {devices} device(s)' in results[0][1]
    assert ('resumed from' in results[0][1]) == (total == 2)
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.reference(batch_size=BATCH),
                               tol=1e-5)


def test_another_batch_size_is_refused_before_anything_is_touched(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_main(tiny_run.args(workdir, total_epochs=1, batch_size=BATCH), env=tiny_run.ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = sorted(os.walk(workdir))
  proc = run_main(tiny_run.args(workdir, batch_size=32), env=tiny_run.ENV)
  line = _one_line_error(proc)
  assert 'cannot resume exactly: batch_size is 32 here but 64 in the checkpoint' in line
  assert sorted(os.walk(workdir)) == before


@pytest.mark.parametrize('signalled', [(1,), (0, 1)])
def test_sigterm_to_one_or_both_processes_saves_one_step_and_resumes_exactly(tmp_path,
                                                                             signalled):
  """SIGTERM early in epoch 2 (vit_jax/train/faults.py: at a fixed step) to process 1, or to
  both: JAX's preemption sync picks one step for both (the notice travels through the
  coordination service, so the step comes a little later, under load up to an epoch:
  three epochs leave room), both exit 75 with that checkpoint written, and the relaunched
  pair finishes like an uninterrupted run."""
  workdir = tmp_path / 'run'
  steps = 1500 // BATCH
  envs = [{'VIT_JAX_FAULT': f'step:{steps + 2}:TERM'} if i in signalled else {}
          for i in range(2)]
  results = _launch(workdir, 2, envs=envs, batch_size=BATCH, total_epochs=3)
  at = set()
  for rc, out in results:
    assert rc == 75, out[-3000:]
    at |= set(re.findall(r'preempted: SIGTERM at step (\d+)', out))
  assert len(at) == 1, at                                       # one step for both
  at = int(at.pop())
  assert steps + 2 <= at < 3 * steps                            # after the signal
  assert 'epoch   1/3' in results[0][1] and 'epoch   1/3' not in results[1][1]
  results = _launch(workdir, 2, batch_size=BATCH, total_epochs=3)
  for rc, out in results:
    assert rc == 0, out[-3000:]
  # A step on an epoch boundary is that epoch's checkpoint, which the resume takes instead.
  resumed = f'checkpoints at step {at}' if at % steps else f'checkpoints at epoch {at // steps}'
  assert 'resumed from' in results[0][1] and resumed in results[0][1], results[0][1][-2000:]
  tiny_run.assert_same_metrics(tiny_run.rows(workdir),
                               tiny_run.reference(batch_size=BATCH, total_epochs=3), tol=1e-5)


def _one_line_error(proc):
  assert proc.returncode == exits.ERROR, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
  return lines[0]


def test_missing_processes_stop_within_the_timeout_naming_the_count(tmp_path):
  address = f'localhost:{_free_port()}'
  start = time.time()
  proc = run_main(tiny_run.args(tmp_path / 'run', **_dist(address, 2, 0, timeout=3)),
                  env=tiny_run.ENV, timeout=120)
  line = _one_line_error(proc)
  assert time.time() - start < 60
  assert 'did not finish in 3s' in line and '2 processes' in line and address in line


def test_unreachable_coordinator_stops_within_the_timeout_naming_it(tmp_path):
  address = f'127.0.0.1:{_free_port()}'     # nothing listens there
  start = time.time()
  proc = run_main(tiny_run.args(tmp_path / 'run', **_dist(address, 2, 1, timeout=3)),
                  env=tiny_run.ENV, timeout=120)
  line = _one_line_error(proc)
  assert time.time() - start < 60 and address in line


@pytest.mark.parametrize('overrides,fragment', [
    ({'distributed.num_processes': 2}, 'needs distributed.coordinator_address=HOST:PORT'),
    ({'distributed.coordinator_address': 'nohostport'}, 'must be HOST:PORT'),
    ({'distributed.coordinator_address': 'localhost:1', 'distributed.num_processes': 2,
      'distributed.process_id': 2}, 'distributed.process_id=2 must be < '),
])
def test_bad_distributed_config_is_one_line(tmp_path, overrides, fragment):
  proc = run_main(tiny_run.args(tmp_path / 'run', **overrides), env=tiny_run.ENV)
  assert fragment in _one_line_error(proc)
  assert not (tmp_path / 'run').exists()
