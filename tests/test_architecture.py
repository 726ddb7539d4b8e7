"""docs/architecture.md's import rules, read from its table of rooms and checked on the source:
every `vit_jax` import of every module (function-level ones included) must be one its room
allows. Data flows
config -> data + model + optimizer -> step -> loop -> checkpoints/metrics -> analysis;
nothing imports upward."""
import ast
import os
import re

import pytest

from conftest import REPO

DOC = os.path.join(REPO, 'docs', 'architecture.md')
EVERY_ROOM = 'every room may import it'


def read_rooms(text: str) -> tuple[dict, set]:
  """docs/architecture.md's table of rooms: {room: the rooms it may import ('*': any)}, and
  the rooms every room may import (their row says so). A room is a module (dotted, without
  'vit_jax.') or a prefix of modules; the most specific key that matches a module applies."""
  section = text.split('## The rooms', 1)[1].split('\n## ', 1)[0]
  allowed, universal = {}, set()
  for line in section.splitlines():
    cells = [c.strip() for c in re.split(r'(?<!\\)\|', line.strip().strip('|'))]  # \| is text
    if len(cells) != 3 or not cells[0].startswith('`'):
      continue
    rooms, may = re.findall(r'`([\w.]+)`', cells[0]), cells[2]
    rule = {'*'} if may.startswith('anything') else set(re.findall(r'`([\w.]+)`', may))
    for room in rooms:
      allowed[room] = rule
    if EVERY_ROOM in may:
      universal |= set(rooms)
  return allowed, universal


ALLOWED, UNIVERSAL = read_rooms(open(DOC).read())


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
  rules = rules | UNIVERSAL
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


def test_the_rooms_are_read_from_the_doc():
  """The table is parsed as it reads: a room's own row, 'nothing', 'anything', and the rooms
  every room may import."""
  assert ALLOWED['train.checkpoint'] >= {'models', 'train.faults'}
  assert ALLOWED['trainers'] == set() and ALLOWED['main'] == {'*'}
  assert 'files' in UNIVERSAL and 'models' not in UNIVERSAL
  table = ('## The rooms\n\n| room | holds | may import |\n|---|---|---|\n'
           '| `a`, `b` | x | `c` |\n| `c` | y | nothing; every room may import it |\n'
           '| `d` | z | anything |\n\n## Next\n| `e` | w | `a` |\n')
  assert read_rooms(table) == ({'a': {'c'}, 'b': {'c'}, 'c': set(), 'd': {'*'}}, {'c'})


def test_every_trainer_names_functions_that_exist():
  from vit_jax import trainers
  for name, spec in trainers.TRAINERS.items():
    for ref in filter(None, (spec.run, spec.check)):
      assert callable(trainers.function(ref)), (name, ref)
  with pytest.raises(ValueError, match=r"trainer='finetune' is not one of \('train', "):
    trainers.get('finetune')
