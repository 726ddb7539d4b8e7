"""docs/architecture.md's import rules, checked on the source: every `vit_jax` import of
every module (function-level ones included) must be one its room allows. Data flows
config -> data + model + optimizer -> step -> loop -> checkpoints/metrics -> analysis;
nothing imports upward."""
import ast
import os

import pytest

from conftest import REPO

# Module (dotted, without 'vit_jax.') or room prefix -> what it may import. The most
# specific key that matches a module applies. Entry points (main and the tables and
# checks around it) may import anything.
ALLOWED = {
    'package': set(),             # vit_jax/__init__.py
    'exits': set(),
    'config_lib': set(),
    'trainers': set(),            # names functions as strings; imports them when asked
    'runlock': set(),
    'distributed': {'exits'},
    'models': {'models'},
    'data': {'data', 'exits'},
    'train': set(),               # train/__init__.py; a new module there gets its own row
    'train.faults': set(),
    'train.losses': set(),
    'train.optim': set(),
    'train.metrics_io': {'train.faults'},
    'train.checkpoint': {'models', 'train.faults'},
    'train.teacher': {'models', 'train.checkpoint'},
    'train.steps': {'models', 'data', 'train.losses', 'train.optim'},
    'train.evaluation': {'data'},
    'train.evaluate': {'models', 'data', 'train.checkpoint', 'train.evaluation', 'train.losses',
                       'train.steps'},
    'train.preemption': {'exits', 'train.checkpoint'},
    'train.loop': {'exits', 'models', 'data', 'train'},
    'analysis': {'analysis', 'models', 'data', 'train.checkpoint', 'train.metrics_io'},
    'crystallize': {'crystallize'},
    'bench': {'bench', 'config_lib', 'models', 'data', 'train', 'crystallize'},
    'export': {'exits', 'models', 'data', 'train.checkpoint'},
    'main': {'*'},
    'preflight': {'*'},
    'sweep': {'*'},               # an entry point: builds and checks configs as main does
}


def module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.join(REPO, 'vit_jax'))[:-3].replace(os.sep, '.')
  return rel.removesuffix('__init__').rstrip('.') or 'package'


def rule(module: str) -> set:
  keys = [k for k in ALLOWED if module == k or module.startswith(k + '.')]
  assert keys, f'vit_jax.{module} belongs to no room of docs/architecture.md'
  return ALLOWED[max(keys, key=len)]


def imports(path: str) -> set:
  """The vit_jax modules a file imports ('from vit_jax.x import y' counts as x.y when y
  is a module, else x)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('vit_jax'):
      base = node.module[len('vit_jax'):].lstrip('.')
      for alias in node.names:
        name = f'{base}.{alias.name}' if base else alias.name
        is_module = os.path.exists(os.path.join(REPO, 'vit_jax', *name.split('.')) + '.py') or \
            os.path.isdir(os.path.join(REPO, 'vit_jax', *name.split('.')))
        found.add(name if is_module else base)
    elif isinstance(node, ast.Import):
      found |= {a.name[len('vit_jax.'):] for a in node.names if a.name.startswith('vit_jax.')}
  return found


def allowed(target: str, rules: set) -> bool:
  return '*' in rules or any(target == r or target.startswith(r + '.') for r in rules)


SOURCES = sorted(os.path.join(root, f) for root, _, files in os.walk(os.path.join(REPO, 'vit_jax'))
                 for f in files if f.endswith('.py'))


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: module_name(p))
def test_imports_follow_the_rooms(path):
  module = module_name(path)
  rules = rule(module)
  bad = sorted(t for t in imports(path) if not allowed(t, rules))
  assert not bad, f'vit_jax.{module} imports {bad}, outside what its room allows ({sorted(rules)})'


def test_the_rule_catches_an_upward_import(tmp_path):
  """A step module that imported the loop would be refused."""
  src = tmp_path / 'steps.py'
  src.write_text('from vit_jax.train import loop\nfrom vit_jax import models\n')
  bad = [t for t in imports(str(src)) if not allowed(t, rule('train.steps'))]
  assert bad == ['train.loop']


def test_every_room_is_in_the_doc():
  doc = open(os.path.join(REPO, 'docs', 'architecture.md')).read()
  for key in ALLOWED:
    assert f'`{key}' in doc, key


def test_every_trainer_names_functions_that_exist():
  from vit_jax import trainers
  for name, spec in trainers.TRAINERS.items():
    for ref in filter(None, (spec.run, spec.check)):
      assert callable(trainers.function(ref)), (name, ref)
  with pytest.raises(ValueError, match=r"trainer='finetune' is not one of \('train', "):
    trainers.get('finetune')
