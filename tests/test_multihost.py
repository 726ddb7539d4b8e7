"""Several processes on JAX's multi-process runtime (CPU collectives over localhost)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REPO, run_main, run_main_batch
import tiny_run
from vit_jax import exits
from vit_jax.train import checkpoint
from vit_jax.train import loop


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

# One workdir trained an epoch per launch (launch k: total_epochs=k of a CHAIN-long schedule), each launch on another
# topology, so that every move between them that behaves differently is made once: a
# one-process checkpoint restored by two processes, a two-process one by two (resume across
# processes), a two-process one into one process's four-device mesh, and a four-device one
# on one device.
CHAIN = ('1 process', '2 processes', '2 processes', '4 devices', '1 process')


def _launch_on(workdir, topology, **more):
  if topology.endswith('processes'):
    return _launch(workdir, int(topology[0]), **more)
  env = dict(tiny_run.ENV)
  if topology == '4 devices':
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  proc = run_main(tiny_run.args(workdir, **more), env=env)
  return [(proc.returncode, proc.stdout + proc.stderr)]


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
  """The CHAIN's workdir and each launch's (returncode, output) per process."""
  workdir = tmp_path_factory.mktemp('chain') / 'run'
  # Each launch stops one epoch later on the same schedule: extending a run is explicit
  # (schedule_epochs), a changed total_epochs alone is refused on resume.
  launches = [_launch_on(workdir, topology, total_epochs=epoch, schedule_epochs=len(CHAIN),
                         batch_size=BATCH)
              for epoch, topology in enumerate(CHAIN, 1)]
  return workdir, launches


@pytest.mark.parametrize('epoch', range(1, len(CHAIN) + 1),
                         ids=[f'epoch {e} on {t}' for e, t in enumerate(CHAIN, 1)])
def test_each_launch_resumes_on_its_topology(chain, epoch):
  _, launches = chain
  results, topology = launches[epoch - 1], CHAIN[epoch - 1]
  for rc, out in results:
    assert rc == 0, out[-3000:]
  devices = {'4 devices': 4, '1 process': 1, '2 processes': 2}[topology]
  assert f'on {devices} device(s)' in results[0][1]
  assert ('resumed from' in results[0][1]) == (epoch > 1)
  if epoch > 1:
    assert f'at epoch {epoch - 1}' in results[0][1], results[0][1][-2000:]


def test_a_checkpoint_resumes_on_another_topology_as_if_never_moved(chain, tmp_path):
  """Every epoch of the chain equals the same launches (total_epochs 1, 2, ..., each
  resuming the last, as the schedule depends on total_epochs) made in this process on one
  device, within 1e-5 (data-parallel sums over other device counts round differently):
  the train state is restored into each new mesh and the data stream resumes at the
  saved step, its order depending on neither the device nor the process count. Epochs 2
  and 3 are two processes training like one."""
  workdir, _ = chain
  for total in range(1, len(CHAIN) + 1):
    loop.train_and_evaluate(tiny_run.config(batch_size=BATCH, total_epochs=total,
                                            schedule_epochs=len(CHAIN)),
                            str(tmp_path / 'one_device'))
  rows, reference = tiny_run.rows(workdir), tiny_run.rows(tmp_path / 'one_device')
  tiny_run.assert_same_metrics(rows, reference, tol=1e-5)
  diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(rows[1:3], reference[1:3])
             for k in ('train_loss', 'val_loss'))
  print(f'2 processes vs 1: max loss difference {diff:.2e}')
  saved = json.loads(open(os.path.join(checkpoint.epoch_dir(str(workdir), 2), 'data',
                                       'metadata')).read())
  assert saved == dict(num_records=1500, global_batch=BATCH, seed=0, repeats=1)


def test_another_batch_size_is_refused_before_anything_is_touched(chain, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(chain[0], workdir)
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


@pytest.fixture(scope='module')
def start_errors(tmp_path_factory):
  """Command lines that stop before training, run in one interpreter (a forked
  `python -m vit_jax.main` each): name -> (CompletedProcess with .seconds, workdir, address)."""
  root = tmp_path_factory.mktemp('start_errors')
  cases = {
      # 2 processes expected, only process 0 started
      'missing': _dist(f'localhost:{_free_port()}', 2, 0, timeout=3),
      'unreachable': _dist(f'127.0.0.1:{_free_port()}', 2, 1, timeout=3),  # nothing listens
      **{f'bad {i}': overrides for i, (overrides, _) in enumerate(BAD_DISTRIBUTED)}}
  workdirs = {name: root / name.replace(' ', '_') / 'run' for name in cases}
  procs = run_main_batch([tiny_run.args(workdirs[n], **more) for n, more in cases.items()],
                         env=tiny_run.ENV, timeout=300)
  return {n: (p, workdirs[n], cases[n].get('distributed.coordinator_address'))
          for n, p in zip(cases, procs)}


def test_missing_processes_stop_within_the_timeout_naming_the_count(start_errors):
  proc, _, address = start_errors['missing']
  line = _one_line_error(proc)
  assert proc.seconds < 60
  assert 'did not finish in 3s' in line and '2 processes' in line and address in line


def test_unreachable_coordinator_stops_within_the_timeout_naming_it(start_errors):
  proc, _, address = start_errors['unreachable']
  line = _one_line_error(proc)
  assert proc.seconds < 60 and address in line


BAD_DISTRIBUTED = [
    ({'distributed.num_processes': 2}, 'needs distributed.coordinator_address=HOST:PORT'),
    ({'distributed.coordinator_address': 'nohostport'}, 'must be HOST:PORT'),
    ({'distributed.coordinator_address': 'localhost:1', 'distributed.num_processes': 2,
      'distributed.process_id': 2}, 'distributed.process_id=2 must be < '),
]


@pytest.mark.parametrize('case', range(len(BAD_DISTRIBUTED)))
def test_bad_distributed_config_is_one_line(start_errors, case):
  proc, workdir, _ = start_errors[f'bad {case}']
  assert BAD_DISTRIBUTED[case][1] in _one_line_error(proc)
  assert not workdir.exists()
