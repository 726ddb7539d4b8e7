"""Several processes on JAX's multi-process runtime (CPU collectives over localhost)."""
import os
import socket
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from conftest import REPO, run_main
import tiny_run
from vit_jax import distributed
from vit_jax.data import samplers


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _dist(address, n, i, timeout=120):
  return {'distributed.coordinator_address': address, 'distributed.num_processes': n,
          'distributed.process_id': i, 'distributed.init_timeout_s': timeout}


def _launch(workdir, n, **more):
  """n processes of one run; returns their (returncode, output) in process order."""
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'vit_jax.main',
       *tiny_run.args(workdir, **_dist(address, n, i), **more)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, **tiny_run.ENV)) for i in range(n)]
  return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


@pytest.mark.parametrize('processes', [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(processes):
  unsharded = grain.samplers.IndexSampler(num_records=50, shuffle=True, num_epochs=None, seed=7)
  one = samplers.GlobalBatchOrder(unsharded, 12, grain.sharding.ShardOptions(0, 1))
  per = 12 // processes
  ranks = [samplers.GlobalBatchOrder(unsharded, per, grain.sharding.ShardOptions(r, processes))
           for r in range(processes)]
  for batch in range(10):       # > 4 epochs of 50 records
    want = [one[batch * 12 + j] for j in range(12)]
    # grain's DataLoader gives process r the sampler positions r, r + P, r + 2P, ...
    got = [ranks[r][(batch * per + j) * processes + r] for r in range(processes)
           for j in range(per)]
    assert [m.record_key for m in got] == [m.record_key for m in want]
    assert [m.rng.integers(2**31) for m in got] == [m.rng.integers(2**31) for m in want]


BATCH = 64   # global: 32 rows per process, 23 steps per epoch


def test_two_processes_train_like_one_and_resume_across_processes(tmp_path):
  workdir = tmp_path / 'run'
  for total in (1, 2):          # the second launch restores the first one's checkpoint
    results = _launch(workdir, 2, total_epochs=total, batch_size=BATCH)
    for rc, out in results:
      assert rc == 0, out[-3000:]
    assert ('resumed from' in results[0][1]) == (total == 2)
  assert 'on 2 device(s)' in results[0][1]
  data = os.listdir(workdir / 'checkpoints' / '2' / 'data')
  assert sorted(f for f in data if f.endswith('.json')) == ['process_0-of-2.json',
                                                            'process_1-of-2.json']
  rows = tiny_run.rows(workdir)
  reference = tiny_run.reference(batch_size=BATCH)
  tiny_run.assert_same_metrics(rows, reference, tol=1e-5)
  diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(rows, reference)
             for k in ('train_loss', 'val_loss'))
  print(f'2 processes vs 1: max loss difference {diff:.2e}')


def _one_line_error(proc):
  assert proc.returncode == distributed.EXIT_ERROR, proc.stderr[-2000:]
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
