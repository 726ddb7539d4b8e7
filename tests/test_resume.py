"""What running a workdir's command again may change: the settings that do not change what
is trained, an extension on the run's own schedule, and a start over only when asked."""
import json
import os
import shutil

import pytest

from conftest import run_main, snapshot
import tiny_run

EXIT_ERROR = 2
# One epoch of 23 updates (batch 64); the lr is the schedule's at the epoch itself (no lag).
FIRST = {'batch_size': 64, 'total_epochs': 1, 'optim.schedule_epoch_lag': 0}


def _one_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == EXIT_ERROR and lines and lines[-1].startswith('error: '), \
      proc.stderr[-3000:]
  return lines[-1]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A workdir that trained its one epoch."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  proc = run_main(tiny_run.args(workdir, **FIRST), env=tiny_run.ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture
def workdir(finished, tmp_path):
  shutil.copytree(finished, tmp_path / 'run')
  return tmp_path / 'run'


def test_other_trained_settings_are_refused_naming_them(workdir):
  """A finished run run again with another dataset.std and lr: one line naming both, nothing
  touched (config.json keeps what the run was trained with, so an export stays right)."""
  before = snapshot(workdir)
  proc = run_main(tiny_run.args(workdir, **FIRST, **{'dataset.std': '(0.3, 0.3, 0.3)',
                                                     'optim.lr': 2e-3}), env=tiny_run.ENV)
  line = _one_line(proc)
  assert len(proc.stderr.strip().splitlines()) == 1
  assert 'was trained with other settings: dataset.std is [0.3, 0.3, 0.3] here but ' \
         '[0.5, 0.5, 0.5] in' in line
  assert 'optim.lr is 0.002 here but 0.005 in' in line
  assert snapshot(workdir) == before


def test_more_epochs_without_an_extension_are_refused(workdir):
  """total_epochs raised alone would switch the cosine schedule mid-run: refused, naming the
  explicit extension."""
  before = snapshot(workdir)
  line = _one_line(run_main(tiny_run.args(workdir, **FIRST | {'total_epochs': 2}),
                            env=tiny_run.ENV))
  assert 'total_epochs=2 would switch to another schedule mid-run' in line
  assert 'add --config.schedule_epochs=1' in line
  assert snapshot(workdir) == before


def test_an_extension_trains_on_at_the_end_of_the_runs_schedule(workdir, tmp_path):
  """total_epochs=2 with schedule_epochs=1: epoch 1 stays as it was, epoch 2 trains at
  min_lr (timm's cosine after t_initial), and both equal a run planned so from the start."""
  extended = FIRST | {'total_epochs': 2, 'schedule_epochs': 1}
  before = tiny_run.rows(workdir)
  proc = run_main(tiny_run.args(workdir, **extended), env=tiny_run.ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = tiny_run.rows(workdir)
  assert rows[0] == before[0] and float(rows[1]['lr']) == pytest.approx(1e-5)   # min_lr
  config = json.loads((workdir / 'config.json').read_text())
  assert (config['total_epochs'], config['schedule_epochs']) == (2, 1)
  planned = tmp_path / 'planned'
  assert run_main(tiny_run.args(planned, **extended), env=tiny_run.ENV).returncode == 0
  tiny_run.assert_same_metrics(rows, tiny_run.rows(planned))
  # Later, the same extension runs again; without schedule_epochs it is refused.
  assert 'nothing to do' in run_main(tiny_run.args(workdir, **extended), env=tiny_run.ENV).stdout
  line = _one_line(run_main(tiny_run.args(workdir, **extended | {'schedule_epochs': 0}),
                            env=tiny_run.ENV))
  assert 'add --config.schedule_epochs=1' in line


def test_settings_that_do_not_change_the_training_are_taken(workdir):
  """Evaluation, logging and checkpoint cadence may change on a resume; config.json records
  them, and the trained fields stay."""
  proc = run_main(tiny_run.args(workdir, **FIRST, eval_batch_size=32, log_every_steps=5,
                                checkpoint_every_epochs=3), env=tiny_run.ENV)
  assert proc.returncode == 0 and 'has trained all its 1 epochs; nothing to do' in proc.stdout
  config = json.loads((workdir / 'config.json').read_text())
  assert (config['eval_batch_size'], config['optim']['lr']) == (32, 0.005)


def test_a_workdir_of_unreadable_checkpoints_starts_over_only_when_asked(workdir, finished):
  """Every checkpoint truncated: the first run sets them aside and stops (exit 2); the same
  command again is refused in one line (it used to start from epoch 1 without a word);
  with start_over=True it trains from epoch 1, as the first run did."""
  ckpt = workdir / 'checkpoints'
  for root, _, names in os.walk(ckpt):
    for name in names:
      if os.path.basename(root) == 'd':            # the array files
        os.truncate(os.path.join(root, name), 0)
  args = tiny_run.args(workdir, **FIRST)
  assert 'start_over=True' in _one_line(run_main(args, env=tiny_run.ENV))
  assert sorted(os.listdir(ckpt)) == ['23.unreadable']
  again = run_main(args, env=tiny_run.ENV)
  line = _one_line(again)
  assert len(again.stderr.strip().splitlines()) == 1
  assert 'has no readable checkpoint: its checkpoints were set aside as unreadable ' \
         '(23.unreadable in' in line and 'add --config.start_over=True' in line
  proc = run_main(args + ['--config.start_over=True'], env=tiny_run.ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from' not in proc.stdout
  tiny_run.assert_same_metrics(tiny_run.rows(workdir), tiny_run.rows(finished))
  assert sorted(os.listdir(ckpt)) == ['23', '23.unreadable']
