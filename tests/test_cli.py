"""python -m vit_jax.main: one-line errors before any work, and overrides that take effect."""
import json
import os

import pytest

from conftest import run_main, run_main_batch


def _one_line_error(proc, *fragments):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith('error: ')
  for f in fragments:
    assert f in lines[0], lines[0]


BAD_INPUT = [
    (['--config', 'configs/nope.py'], ["config file 'configs/nope.py' not found", 'register.py']),
    (['--config', 'configs/vanilla.py:quik'], ["unknown config argument 'quik'", "'quick'"]),
    (['--config', 'configs/vanilla.py:quick', '--config.modle.depth=2'],
     ["unknown config key 'modle'", "did you mean 'model'"]),
    (['--config', 'configs/vanilla.py:quick', '--config.model.dept=2'],
     ["unknown config key 'dept' in --config.model.dept", "'depth'"]),
    (['--config', 'configs/vanilla.py:quick', '--config.model.depth=two'],
     ['--config.model.depth=two', 'invalid literal for int()']),
    (['--config', 'configs/vanilla.py:quick', '--config.model.gate=g3'],
     ["model.gate='g3' is not one of ('none', 'g1', 'g2')"]),
    (['--config', 'configs/vanilla.py:quick', '--config.trainer=fit'],
     ["trainer='fit' is not one of ('train', 'analyze', 'evaluate', 'crystallize')"]),
    (['--config', 'configs/vanilla.py:quick', '--config.batch_size=0'],
     ['batch_size=0 must be a positive multiple']),
    (['--config', 'configs/vanilla.py:quick', '--config.grad_accum_steps=3'],
     ['batch_size=64 must be a positive multiple of grad_accum_steps=3 x 1 devices = 3']),
    (['--config', 'configs/vanilla.py:quick', '--config.trainer=evaluate'],
     ['does not exist; evaluate needs a training workdir']),
    (['--config', 'configs/deit_distill.py:quick'],
     ["teacher.checkpoint='' does not exist", 'configs/teacher_resnet.py']),
    (['--config', 'configs/deit_distill.py:quick', '--config.teacher.checkpoint=runs/none'],
     ["teacher.checkpoint='runs/none' does not exist"]),
    (['--config', 'configs/vanilla.py:quick', '--config.augment.erase_prob=1.5'],
     ['augment.erase_prob=1.5 is outside [0.0, 1.0]']),
    (['--config', 'configs/vanilla.py:quick', '--config.optim.lr=nan'],
     ['optim.lr=nan must be a finite number > 0']),
    (['--config', 'configs/vanilla.py:quick', '--config.optim.lr=-1'],
     ['optim.lr=-1.0 must be a finite number > 0']),
    (['--config', 'configs/vanilla.py:quick', '--config.optim.min_lr=-1e-5'],
     ['optim.min_lr=-1e-05 is outside [0.0, inf]']),
    (['--config', 'configs/vanilla.py'],
     ["dataset 'imagenet100' needs --config.dataset.data_dir=DIR", 'prepare_imagenet100']),
    (['--config', 'configs/vanilla.py', '--config.dataset.data_dir=/nonexistent'],
     ["dataset.data_dir='/nonexistent' has no train/ folder"]),
    (['--config', 'configs/vanilla.py:quick', '--config.teacher.kind=hard'],
     ["teacher.kind='hard' needs model.distillation=True"]),
]


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory):
  """Every BAD_INPUT command line, each with its own workdir, run in one interpreter
  (conftest.run_main_batch: a forked `python -m vit_jax.main` each)."""
  root = tmp_path_factory.mktemp('bad_input')
  workdirs = [root / str(i) / 'run' for i in range(len(BAD_INPUT))]
  procs = run_main_batch([args + ['--workdir', str(w)]
                          for (args, _), w in zip(BAD_INPUT, workdirs)])
  return list(zip(procs, workdirs))


@pytest.mark.parametrize('case', range(len(BAD_INPUT)),
                         ids=[' '.join(a[1:]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line(bad_input_runs, case):
  proc, workdir = bad_input_runs[case]
  _one_line_error(proc, *BAD_INPUT[case][1])
  assert not workdir.exists()  # nothing was started


def test_unprepared_dataset_names_the_prepare_command(tmp_path):
  proc = run_main(['--config', 'configs/deit_cifar100.py', '--workdir', str(tmp_path / 'run')],
                  env={'TFDS_DATA_DIR': str(tmp_path / 'tfds')})
  _one_line_error(proc, "dataset 'cifar100' is not prepared",
                  "tfds.builder('cifar100').download_and_prepare(file_format='array_record')")


def test_quick_run_with_overrides(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_main(['--config', 'configs/register.py:quick', '--workdir', str(workdir),
                   '--config.total_epochs=2', '--config.model.depth=2'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'epoch   2/2' in proc.stdout and 'final validation top-1' in proc.stdout
  config = json.loads((workdir / 'config.json').read_text())
  assert config['total_epochs'] == 2 and config['model']['depth'] == 2
  assert config['model']['num_registers'] == 4
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
