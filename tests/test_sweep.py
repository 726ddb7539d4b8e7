"""Seed sweeps (vit_jax/sweep.py) and the scoreboard's mean and std over seeds."""
import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from tiny_run import ENV
from vit_jax import sweep
from vit_jax.analysis import scoreboard
from vit_jax.train import metrics_io

# One epoch of a one-block width-32 model on digits, 12 steps: a run is mostly start-up.
TINY = ['--set', 'total_epochs=1', '--set', 'model.depth=1', '--set', 'model.width=32',
        '--set', 'model.num_heads=2', '--set', 'probe.num_images=8', '--set', 'batch_size=128']
GRID = ['--config', 'configs/vanilla.py:quick', '--seeds', '0,1', '--grid', 'optim.lr=1e-3,2e-3']
NAMES = ['optim.lr=1e-3__seed=0', 'optim.lr=1e-3__seed=1', 'optim.lr=2e-3__seed=0',
         'optim.lr=2e-3__seed=1']


def run_sweep(args):
  return subprocess.run([sys.executable, '-m', 'vit_jax.sweep', *args], cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, **ENV), timeout=600)


def test_a_sweep_runs_each_point_once_and_a_rerun_skips_them(tmp_path):
  root = str(tmp_path / 'sweep')
  proc = run_sweep(GRID + TINY + ['--root', root])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert sorted(os.listdir(root)) == NAMES
  for name in NAMES:
    workdir = os.path.join(root, name)
    lr, seed = name.split('__')[0].split('=')[1], int(name[-1])
    record = json.load(open(os.path.join(workdir, 'sweep.json')))
    assert record == {'config': 'configs/vanilla.py:quick', 'seed': seed,
                      'grid': {'optim.lr': lr}, 'set': dict(a.split('=') for a in TINY[1::2])}
    config = json.load(open(os.path.join(workdir, 'config.json')))   # what the run used
    assert (config['seed'], config['optim']['lr'], config['model']['width']) == (
        seed, float(lr), 32)
    assert [r['epoch'] for r in metrics_io.read(os.path.join(workdir, 'metrics.csv'))] == ['1']
  logs = {n: os.path.getmtime(os.path.join(root, n, 'train.log')) for n in NAMES}

  again = run_sweep(GRID + TINY + ['--root', root])
  assert again.returncode == 0, again.stderr
  assert again.stdout.count('finished, skipped') == 4 and 'running' not in again.stdout
  assert logs == {n: os.path.getmtime(os.path.join(root, n, 'train.log')) for n in NAMES}

  # On SLURM: one sbatch per unfinished run; here every run is finished.
  dry = run_sweep(GRID + TINY + ['--root', root, '--slurm', 'launch/slurm.sbatch', '--dry-run'])
  assert dry.returncode == 0 and dry.stdout.count('finished, skipped') == 4
  assert 'sbatch' not in dry.stdout.replace('slurm.sbatch', '')


def test_slurm_dry_run_prints_one_sbatch_per_run_and_writes_nothing(tmp_path, capsys):
  root = str(tmp_path / 'sweep')
  assert sweep.main(GRID + TINY + ['--root', root, '--slurm', 'launch/slurm.sbatch',
                                   '--dry-run']) == 0
  commands = [shlex.split(l) for l in capsys.readouterr().out.splitlines()
              if l.startswith('sbatch')]
  assert len(commands) == 4 and not os.path.exists(root)
  for name, command in zip(NAMES, commands):
    workdir = os.path.join(root, name)
    lr, seed = name.split('__')[0].split('=')[1], name[-1]
    assert f'--export=ALL,CONFIG=configs/vanilla.py:quick,WORKDIR={workdir}' in command
    # launch/slurm.sbatch passes its arguments on to vit_jax.main as overrides
    script = command.index('launch/slurm.sbatch')
    assert command[script + 1:] == [f'--config.{a}' for a in TINY[1::2]] + [
        f'--config.optim.lr={lr}', f'--config.seed={seed}']


def test_slurm_submits_each_run_with_the_callers_environment(tmp_path, capsys, monkeypatch):
  """A stand-in sbatch on PATH records what it is given: the overrides, and JAX_PLATFORMS
  as the caller had it (the sweep's own checks run on the CPU; the jobs must not)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'sbatch.log'
  sbatch = bin_dir / 'sbatch'
  sbatch.write_text(f'#!/bin/sh\necho "JAX_PLATFORMS=${{JAX_PLATFORMS:-unset}} $*" >> {log}\n'
                    'echo "Submitted batch job 42"\n')
  sbatch.chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  root = str(tmp_path / 'sweep')
  assert sweep.main(['--config', 'configs/vanilla.py:quick', '--seeds', '3', '--root', root,
                     '--slurm', 'launch/slurm.sbatch']) == 0
  line, = log.read_text().splitlines()
  assert line.startswith('JAX_PLATFORMS=cuda ') and line.endswith(
      'launch/slurm.sbatch --config.seed=3'), line
  assert 'seed=3: Submitted batch job 42' in capsys.readouterr().out
  assert json.load(open(os.path.join(root, 'seed=3', 'sweep.json')))['seed'] == 3


@pytest.mark.parametrize('args, message', [
    (['--grid', 'optim.lrr=1e-3,2e-3'], "unknown config key 'optim.lrr' in configs/vanilla.py:"
                                        "quick: optim has no 'lrr'; did you mean 'optim.lr'?"),
    (['--set', 'modle.depth=2'], "unknown config key 'modle.depth' in configs/vanilla.py:quick: "
                                 "the config has no 'modle'; did you mean 'model'?"),
    (['--grid', 'model.depth=2,two'], "invalid literal for int() with base 10: 'two'"),
    (['--grid', 'model.gate=g1,g9'], "model.gate='g9' is not one of ('none', 'g1', 'g2')"),
    (['--grid', 'optim.lr='], '--grid optim.lr=\'\' needs comma-separated values'),
    (['--seeds', '0,x'], "--seeds='0,x' must be comma-separated integers"),
    (['--grid', 'seed=1,2'], 'give seeds with --seeds'),
    (['--seeds', '0,1,0'], "--seeds='0,1,0' repeats a seed"),
    (['--grid', 'optim.lr=1e-3,2e-3', '--set', 'optim.lr=3e-3'],
     "'optim.lr' is in both --grid and --set"),
    (['--grid', 'dataset.data_dir=a/b,a_b'], "two grid points would share the workdir "
                                             "'dataset.data_dir=a_b__seed=0'"),
])
def test_a_bad_grid_is_one_line_before_any_run(tmp_path, capsys, monkeypatch, args, message):
  root, calls = str(tmp_path / 'sweep'), []
  _stand_in(monkeypatch, calls)    # were it not refused, no run would train
  assert sweep.main(['--config', 'configs/vanilla.py:quick', '--root', root] + args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
  assert not os.path.exists(root) and calls == []


@pytest.mark.parametrize('code', [1, 3])
def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch, code):
  """The first run's process fails (any non-zero exit status); the second still runs; the
  exit status is 1."""
  calls = []

  def command(args, run):
    calls.append(run['name'])
    code_now = code if run['overrides']['seed'] == '0' else 0
    return [sys.executable, '-c',
            f'print("error: stopped on purpose"); raise SystemExit({code_now})']

  monkeypatch.setattr(sweep, 'main_command', command)
  root = str(tmp_path / 'sweep')
  assert sweep.main(['--config', 'configs/vanilla.py:quick', '--seeds', '0,1',
                     '--root', root]) == 1
  out, err = capsys.readouterr()
  assert calls == ['seed=0', 'seed=1']
  assert f'[1/2] seed=0: FAILED (exit code {code}): error: stopped on purpose' in out
  assert '[2/2] seed=1: done' in out
  assert err.strip() == 'sweep: 1 of 2 runs failed: seed=0'


def _workdir(root, name, accs, record=None, config=None):
  path = os.path.join(root, name)
  os.makedirs(path)
  rows = [{k: 0 for k in metrics_io.COLUMNS} | {'epoch': i + 1, 'val_acc1': a,
                                                 'images_per_s': 100.0}
          for i, a in enumerate(accs)]
  metrics_io.write(os.path.join(path, 'metrics.csv'), rows)
  for file, data in (('sweep.json', record), ('config.json', config)):
    if data is not None:
      json.dump(data, open(os.path.join(path, file), 'w'))
  return path


def test_scoreboard_mean_and_sample_std_over_seeds_match_numpy(tmp_path):
  rng = np.random.default_rng(0)
  root = str(tmp_path / 'sweep')
  curves = {}
  for lr, seeds in (('1e-3', 3), ('2e-3', 2), ('4e-3', 1)):
    for seed in range(seeds):
      accs = list(np.round(rng.uniform(10, 90, size=4), 3))
      record = {'config': 'configs/register.py:quick', 'seed': seed, 'grid': {'optim.lr': lr},
                'set': {}}
      _workdir(root, f'optim.lr={lr}__seed={seed}', accs, record=record)
      curves.setdefault(lr, []).append(accs)
  # A run still going (4 of its 10 epochs) is named, not counted.
  _workdir(root, 'optim.lr=1e-3__seed=9', [99.0] * 4, config={'seed': 9, 'total_epochs': 10},
           record={'config': 'configs/register.py:quick', 'seed': 9,
                   'grid': {'optim.lr': '1e-3'}, 'set': {}})
  # Outside a sweep: config.json decides (the same but for the seed => one variant).
  other = str(tmp_path / 'other')
  for seed in (0, 1):
    _workdir(other, f'gated_seed{seed}', [20.0 + seed, 30.0 + 3 * seed],
             config={'seed': seed, 'model': {'gate': 'g1'}})

  rows = [scoreboard.row(w, n) for w, n in scoreboard.workdirs([root, other])]
  groups = scoreboard.over_seeds(rows)
  assert [(g['variant'], g['n']) for g in groups] == [
      ('configs/register.py:quick optim.lr=1e-3', 3),
      ('configs/register.py:quick optim.lr=2e-3', 2),
      ('configs/register.py:quick optim.lr=4e-3', 1), ('gated', 2)]
  for g, lr in zip(groups, ('1e-3', '2e-3', '4e-3')):
    best = np.max(curves[lr], axis=1)
    final = np.asarray(curves[lr])[:, -1]
    np.testing.assert_allclose(g['best_val_acc1_mean'], best.mean(), rtol=1e-12)
    np.testing.assert_allclose(g['final_val_acc1_mean'], final.mean(), rtol=1e-12)
    if len(best) > 1:
      np.testing.assert_allclose(g['best_val_acc1_std'], np.std(best, ddof=1), rtol=1e-12)
      np.testing.assert_allclose(g['final_val_acc1_std'], np.std(final, ddof=1), rtol=1e-12)
    else:
      assert g['best_val_acc1_std'] is None   # one seed: no spread
  assert groups[0]['unfinished'] == ['sweep/optim.lr=1e-3__seed=9'] and not groups[1]['unfinished']
  gated = groups[-1]
  assert gated['best_val_acc1_mean'] == 31.5 and gated['best_val_acc1_std'] == pytest.approx(
      np.sqrt(4.5))   # best of [20, 30] and [21, 33]: 30 and 33

  out = str(tmp_path / 'board.md')
  scoreboard.main(['--out', out, root])
  text = open(out).read()
  g = groups[0]
  assert (f"| configs/register.py:quick optim.lr=1e-3 | 3 | {g['best_val_acc1_mean']:.2f} ± "
          f"{g['best_val_acc1_std']:.2f} |") in text
  assert '| configs/register.py:quick optim.lr=4e-3 | 1 |' in text and '(one seed)' in text
  saved = json.load(open(str(tmp_path / 'board.json')))
  assert len(saved['runs']) == 7 and saved['over_seeds'][1]['n'] == 2
  assert '| sweep/optim.lr=1e-3__seed=9 |' in text   # per run: named by its path


def _stand_in(monkeypatch, calls):
  """sweep.main_command -> a process that records the run and exits 0 (no training)."""
  def command(args, run):
    calls.append(run['name'])
    return [sys.executable, '-c', 'pass']
  monkeypatch.setattr(sweep, 'main_command', command)


SEEDS3 = ['--config', 'configs/vanilla.py:quick', '--seeds', '0,1,2', '--set', 'total_epochs=3']


def _record(seed, **changes):
  return {'config': 'configs/vanilla.py:quick', 'seed': seed, 'grid': {},
          'set': {'total_epochs': '3'}} | changes


def test_only_a_run_at_its_last_epoch_is_skipped(tmp_path, capsys, monkeypatch):
  """Of three runs of a 3-epoch sweep, seed 0 finished (metrics.csv through epoch 3);
  seed 1 was preempted in its last epoch (rows through epoch 2, a mid-epoch checkpoint);
  seed 2 in its first (no metrics.csv yet). Only seed 0 is skipped: the others are run
  again (and resume), not taken for finished."""
  root = str(tmp_path / 'sweep')
  _workdir(root, 'seed=0', [10.0, 20.0, 30.0], record=_record(0))
  _workdir(root, 'seed=1', [10.0, 20.0], record=_record(1))
  os.makedirs(os.path.join(root, 'seed=1', 'checkpoints', '700'))
  os.makedirs(os.path.join(root, 'seed=2'))
  json.dump(_record(2), open(os.path.join(root, 'seed=2', 'sweep.json'), 'w'))
  calls = []
  _stand_in(monkeypatch, calls)
  assert sweep.main(SEEDS3 + ['--root', root]) == 0
  out = capsys.readouterr().out
  assert calls == ['seed=1', 'seed=2']
  assert 'sweep: 3 runs under' in out and ', 1 finished' in out
  assert '[1/3] seed=0: finished, skipped' in out and '[2/3] seed=1: done' in out


@pytest.mark.parametrize('changes', [dict(set={'total_epochs': '5'}), dict(grid={'x': '1'}),
                                     dict(config='configs/register.py:quick')])
def test_a_workdir_of_another_sweep_is_refused_before_any_run(tmp_path, capsys, monkeypatch,
                                                              changes):
  root = str(tmp_path / 'sweep')
  _workdir(root, 'seed=2', [10.0], record=_record(2, **changes))
  before = open(os.path.join(root, 'seed=2', 'sweep.json')).read()
  calls = []
  _stand_in(monkeypatch, calls)
  assert sweep.main(SEEDS3 + ['--root', root]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'seed=2' in err[0] and 'was made by another sweep' in err[0], err
  assert calls == [] and sorted(os.listdir(root)) == ['seed=2']
  assert open(os.path.join(root, 'seed=2', 'sweep.json')).read() == before


def test_ctrl_c_is_one_line_and_the_same_command_goes_on(tmp_path):
  """Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it) while a run trains:
  one line naming the run, exit 130 (a shell's code for Ctrl-C), no traceback; the same
  command then finishes the sweep."""
  root = str(tmp_path / 'sweep')
  args = ['--config', 'configs/vanilla.py:quick', '--seeds', '0'] + TINY + ['--root', root]
  proc = subprocess.Popen([sys.executable, '-m', 'vit_jax.sweep', *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, **ENV), start_new_session=True)
  for line in proc.stdout:
    if line.startswith('[1/1] seed=0: running'):
      break
  os.killpg(proc.pid, signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == sweep.INTERRUPTED, err[-3000:]
  assert err.strip().splitlines() == [
      'sweep: interrupted (Ctrl-C) during [1/1] seed=0; finished runs are kept and an '
      'unfinished one resumes: run the same command to go on']
  again = run_sweep(args)
  assert again.returncode == 0, again.stdout + again.stderr
  assert '[1/1] seed=0: done' in again.stdout


def test_mean_std_is_the_sample_std_and_says_none_when_it_cannot():
  """The one mean +- std of every report (scoreboard, results/fashion_mnist/report.py,
  bench peer), against the standard library's sample statistics."""
  import statistics
  from vit_jax.analysis import scoreboard
  assert scoreboard.mean_std([]) == (None, None)
  assert scoreboard.mean_std([76.5]) == (76.5, None)
  mean, std = scoreboard.mean_std([76.46, 77.24, 77.29])
  assert mean == pytest.approx(statistics.mean([76.46, 77.24, 77.29]), abs=1e-12)
  assert std == pytest.approx(statistics.stdev([76.46, 77.24, 77.29]), abs=1e-12)
