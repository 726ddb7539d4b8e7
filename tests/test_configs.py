"""Every config file loads in both variants and passes the checks that need no data."""
import glob
import importlib.util
import os

import pytest

from conftest import REPO
from vit_jax import models
from vit_jax import preflight

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
# The configs with an `:in1k` argument (their recipe at its published ImageNet-1k size).
IN1K = {'vanilla.py', 'register.py', 'sdpa_gated.py', 'value_gated.py', 'deit_distill.py',
        'teacher_resnet.py'}


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_all_study_configs_present():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {'vanilla.py', 'register.py', 'sdpa_gated.py', 'value_gated.py', 'deit_cifar100.py',
          'deit_svd_cifar100.py', 'deit_distill.py', 'teacher_resnet.py'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_checks(path, tmp_path):
  module = load(path)
  if module.get_config('quick').trainer == 'crystallize':
    pytest.skip('a GPT-2 study config: tests/test_crystallize.py checks it')
  for arg in ('', 'quick'):
    c = module.get_config(arg)
    preflight.check_fields(c)
    models.build_model(c.model, c.dataset.num_classes, c.dtype)
    assert c.model.image_size == c.dataset.image_size
  quick = module.get_config('quick')
  assert quick.dataset.name == 'digits'
  if quick.teacher.kind == 'none':
    preflight.check(quick, str(tmp_path / 'run'))          # fully runnable here
  else:
    with pytest.raises(FileNotFoundError, match='teacher.checkpoint'):
      preflight.check(quick, str(tmp_path / 'run'))
  with pytest.raises(ValueError, match="unknown config argument 'full'"):
    module.get_config('full')
  if os.path.basename(path) not in IN1K:
    with pytest.raises(ValueError, match="unknown config argument 'in1k'"):
      module.get_config('in1k')
    return
  in1k = module.get_config('in1k')           # ImageNet-1k: here only its checks
  preflight.check_fields(in1k)
  models.build_model(in1k.model, in1k.dataset.num_classes, in1k.dtype)
  assert (in1k.dataset.name, in1k.dataset.num_classes) == ('imagenet2012', 1000)
  in1k.dataset.data_dir = str(tmp_path / 'tfds')
  if in1k.teacher.kind == 'none':          # not prepared here: the one line naming the tars
    with pytest.raises(FileNotFoundError, match='put ILSVRC2012_img_train.tar and '):
      preflight.check(in1k, str(tmp_path / 'run_in1k'))


# The configs with an `:fmnist` argument (their recipe on Fashion-MNIST, ~15 CPU minutes).
FMNIST = IN1K | {'deit_cifar100.py', 'deit_svd_cifar100.py'}


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_fmnist_argument(path, tmp_path):
  module = load(path)
  if os.path.basename(path) not in FMNIST:
    if module.get_config('quick').trainer != 'crystallize':
      with pytest.raises(ValueError, match="unknown config argument 'fmnist'"):
        module.get_config('fmnist')
    return
  c = module.get_config('fmnist')
  preflight.check_fields(c)
  models.build_model(c.model, c.dataset.num_classes, c.dtype)
  assert (c.dataset.name, c.dataset.image_size, c.dataset.num_classes) == ('fashion_mnist', 28, 10)
  assert c.model.image_size == 28
  c.dataset.data_dir = str(tmp_path / 'none')             # the files' one line, before any work
  if c.teacher.kind == 'none':
    with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
      preflight.check(c, str(tmp_path / 'run'))
  else:
    with pytest.raises(FileNotFoundError, match='teacher.checkpoint'):
      preflight.check(c, str(tmp_path / 'run'))
