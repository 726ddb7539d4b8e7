"""docs/recipes.md against the configs: every row's value is the config's, and every
recipe field of every study config has a row."""
import ast
import os
import re

import pytest

from conftest import REPO
from vit_jax import config_lib

DOC = os.path.join(REPO, 'docs', 'recipes.md')
# Fields that are not part of a recipe: where the data lives, loader processes, the
# attention kernel, the teacher's checkpoint path (and its model, a ConfigDict of its own).
NOT_RECIPE = {'dataset.data_dir', 'dataset.workers', 'model.attention_impl',
              'teacher.checkpoint', 'teacher.model'}
RECIPE_SECTIONS = ('dataset', 'augment', 'model', 'optim', 'loss', 'teacher', 'ema')
# Config files whose recipe is another's plus the rows of their own (variant tables).
PARENT = {'register': 'vanilla', 'sdpa_gated': 'vanilla', 'value_gated': 'vanilla',
          'deit_svd_cifar100': 'deit_cifar100'}
STUDY_CONFIGS = ('vanilla', 'register', 'sdpa_gated', 'value_gated', 'deit_distill',
                 'deit_cifar100', 'deit_svd_cifar100')


def parse(path=DOC) -> dict:
  """{(config, arg): {field: value}} from the doc's tables."""
  rows, current = {}, None
  for line in open(path).read().splitlines():
    header = re.match(r'#+ .*`configs/(\w+)\.py(?::(\w+))?`', line)
    if header:
      current = (header.group(1), header.group(2) or '')
      continue
    cells = [c.strip() for c in line.strip().strip('|').split('|')] if line.startswith('|') else []
    if len(cells) == 3 and cells[0].startswith('`'):
      key = current
      field, value = cells[0], cells[1]
    elif len(cells) == 4 and cells[0].startswith('`configs/'):
      key = (re.match(r'`configs/(\w+)\.py`', cells[0]).group(1), '')
      field, value = cells[1], cells[2]
    else:
      continue
    rows.setdefault(key, {})[field.strip('`')] = ast.literal_eval(value.strip('`'))
  return rows


def get(config, field):
  node = config
  for part in field.split('.'):
    node = node[part]
  return tuple(node) if isinstance(node, list) else node


def recipe_fields(config) -> set:
  fields = {'total_epochs', 'batch_size', 'dtype'}
  for section in RECIPE_SECTIONS:
    fields |= {f'{section}.{k}' for k in config[section]}
  return fields - NOT_RECIPE


def documented(rows, name) -> dict:
  own = rows.get((name, ''), {})
  return {**documented(rows, PARENT[name]), **own} if name in PARENT else own


@pytest.fixture(scope='module')
def rows():
  return parse()


@pytest.mark.parametrize('name', STUDY_CONFIGS)
def test_every_recipe_field_is_documented_with_the_config_value(rows, name):
  config = config_lib.load(name)
  doc = documented(rows, name)
  missing = sorted(recipe_fields(config) - set(doc))
  assert not missing, f'docs/recipes.md has no row for {missing} of configs/{name}.py'
  for field, value in doc.items():
    assert get(config, field) == value, (name, field, get(config, field), value)


IN1K_CONFIGS = ('vanilla', 'register', 'sdpa_gated', 'value_gated', 'deit_distill')


@pytest.mark.parametrize('name', IN1K_CONFIGS)
def test_in1k_rows_are_every_change_from_the_default(rows, name):
  """The `:in1k` table of a recipe lists exactly the fields where :in1k differs from it."""
  default, in1k = config_lib.load(name), config_lib.load(name, 'in1k')
  doc = rows[(PARENT.get(name, name), 'in1k')]
  changed = {f for f in recipe_fields(in1k) if get(in1k, f) != get(default, f)}
  assert set(doc) == changed, (name, sorted(set(doc) ^ changed))
  for field, value in doc.items():
    assert get(in1k, field) == value, (name, field, get(in1k, field), value)


FMNIST_CONFIGS = ('vanilla', 'register', 'sdpa_gated', 'value_gated', 'deit_distill',
                  'teacher_resnet', 'deit_cifar100', 'deit_svd_cifar100')


@pytest.mark.parametrize('name', FMNIST_CONFIGS)
def test_fmnist_rows_are_every_change_from_the_default(rows, name):
  """The `:fmnist` table of a recipe (its parent's, plus its own where it has one) lists
  exactly the fields where :fmnist differs from the recipe."""
  default, fmnist = config_lib.load(name), config_lib.load(name, 'fmnist')
  doc = {**rows.get((PARENT.get(name, name), 'fmnist'), {}), **rows.get((name, 'fmnist'), {})}
  changed = {f for f in recipe_fields(fmnist) if get(fmnist, f) != get(default, f)}
  assert set(doc) == changed, (name, sorted(set(doc) ^ changed))
  for field, value in doc.items():
    assert get(fmnist, field) == value, (name, field, get(fmnist, field), value)


@pytest.mark.parametrize('arg', ['', 'seed'])
def test_crystallize_rows(rows, arg):
  config = config_lib.load('crystallize_gpt2', arg)
  doc = rows[('crystallize_gpt2', arg)]
  assert {f'study.{k}' for k in config.study if k != 'depth_sweep'} <= set(doc)
  for field, value in doc.items():
    assert get(config, field) == value, (arg, field, get(config, field), value)


def test_a_wrong_row_is_caught(tmp_path, rows):
  """The check can fail: one value changed in a copy of the doc is reported."""
  text = open(DOC).read().replace("| `optim.lr` | `0.001` |", "| `optim.lr` | `0.004` |", 1)
  path = tmp_path / 'recipes.md'
  path.write_text(text)
  changed = documented(parse(str(path)), 'vanilla')
  assert changed['optim.lr'] == 0.004 != get(config_lib.load('vanilla'), 'optim.lr')
