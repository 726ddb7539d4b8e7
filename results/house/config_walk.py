"""Following a run's config through the code of a tree, statically: from a starting function,
every call into another vit_jax function is followed (each function's body once), and the
walk is counted in the rooms of the tree's docs/architecture.md (a module's room is the
most specific row that names it or a package above it):

  rooms      distinct rooms the walk enters, besides the starting one
  entries    call sites that enter another room (a room entered twice counts twice)
  climbs     entries into a room already on the walk's stack: a callee that calls back up
             into a room it was called from (directly or further up)
  returns    entries whose value the caller uses (a result handed back up)

  python results/house/config_walk.py TREE [module:function ...]

Calls are resolved by name: `module.f(...)` through the file's imports, `f(...)` in the
same module, `Class(...)` (its __init__), `self.m(...)`, and `x.m(...)` / `self.x.m(...)`
where x was bound to `Class(...)` in the function or its class, a loop over a module-level
tuple of `module.f` (preflight's checks) as a call of each, and trainers.function(x.run /
x.check) as trainer=train's entry. It reads, never runs.
"""
import ast
import collections
import os
import re
import sys

STARTS = ('vit_jax.train.loop:train_and_evaluate', 'vit_jax.preflight:check')


def load(tree: str) -> dict:
  """{module: (ast, {imported name: module or module.attr})}."""
  out = {}
  root = os.path.join(tree, 'vit_jax')
  for folder, _, names in os.walk(root):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, tree)[:-3].replace(os.sep, '.').removesuffix('.__init__')
      node = ast.parse(open(path).read())
      imports = {}
      for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith('vit_jax'):
          for a in n.names:
            imports[a.asname or a.name] = f'{n.module}.{a.name}'
        elif isinstance(n, ast.Import):
          for a in n.names:
            if a.name.startswith('vit_jax'):
              imports[a.asname or a.name] = a.name
      out[module] = (node, imports)
  return out


def functions(modules: dict) -> tuple[dict, dict]:
  """{'module:qualname': def node} and {def key: 'module:Class' of its class, or None}."""
  defs, owner = {}, {}
  for module, (node, _) in modules.items():
    for top in node.body:
      if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
        defs[f'{module}:{top.name}'] = top
        owner[f'{module}:{top.name}'] = None
      elif isinstance(top, ast.ClassDef):
        for item in top.body:
          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            key = f'{module}:{top.name}.{item.name}'
            defs[key], owner[key] = item, f'{module}:{top.name}'
  return defs, owner


def resolve(call: ast.Call, module: str, modules: dict, defs: dict, types: dict):
  """The 'module:qualname' a call names, or None (not this tree's, or not found). `types`:
  {name or 'self.attr': 'module:Class'} known where the call is."""
  imports = modules[module][1]
  f = call.func

  def named(mod, name):
    for cand in (f'{mod}:{name}', f'{mod}:{name}.__init__'):
      if cand in defs:
        return cand
    return None

  if isinstance(f, ast.Name):
    found = named(module, f.id)
    target = imports.get(f.id)
    if found is None and target and '.' in target:
      found = named(*target.rsplit('.', 1))
    return found
  if not isinstance(f, ast.Attribute):
    return None
  base = f.value
  if isinstance(base, ast.Name) and base.id in imports:
    return named(imports[base.id], f.attr)
  owner = None
  if isinstance(base, ast.Name):
    owner = types.get(base.id)
  elif (isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name)
        and base.value.id == 'self'):
    owner = types.get(f'self.{base.attr}')
  if owner:
    key = f'{owner}.{f.attr}'
    return key if key in defs else None
  return None


def rooms(tree: str):
  """module -> its room, from the table of the tree's docs/architecture.md."""
  text = open(os.path.join(tree, 'docs', 'architecture.md')).read()
  section = text.split('## The rooms', 1)[1].split('\n## ', 1)[0]
  keys = []
  for line in section.splitlines():
    cells = re.split(r'(?<!\\)\|', line.strip().strip('|'))
    if len(cells) == 3 and cells[0].strip().startswith('`'):
      keys += re.findall(r'`([\w.]+)`', cells[0])

  def room(module: str) -> str:
    name = module.removeprefix('vit_jax').lstrip('.') or 'package'
    match = [k for k in keys if name == k or name.startswith(k + '.')]
    return max(match, key=len) if match else name
  return room


def train_entry(modules: dict) -> dict:
  """{'run': 'module:function', 'check': ...} of trainers.TRAINERS['train'] (no check: '')."""
  for node in ast.walk(modules['vit_jax.trainers'][0]):
    if isinstance(node, ast.Dict):
      for k, v in zip(node.keys, node.values):
        if isinstance(k, ast.Constant) and k.value == 'train' and isinstance(v, ast.Call):
          out = {'run': v.args[0].value, 'check': ''}
          out.update({kw.arg: kw.value.value for kw in v.keywords if kw.arg in out})
          return out
  return {}


def tuples(modules: dict, module: str) -> dict:
  """{name: [call targets]} of the module-level tuples of `module.f` names."""
  out = {}
  for top in modules[module][0].body:
    if (isinstance(top, ast.Assign) and len(top.targets) == 1 and
        isinstance(top.targets[0], ast.Name) and isinstance(top.value, ast.Tuple)):
      out[top.targets[0].id] = [e for e in top.value.elts if isinstance(e, ast.Attribute)]
  return out


def walk(tree: str, start: str) -> dict:
  modules = load(tree)
  defs, owner = functions(modules)
  room, entry = rooms(tree), train_entry(modules)

  def instances(key: str) -> dict:
    """Names and self attributes bound to an instance of a class of the tree (`x = C(...)`,
    `self.x = m.C(...)` anywhere in the class), and self."""
    module, klass = key.split(':')[0], owner[key]
    bodies = [defs[k] for k in defs if klass and owner[k] == klass] + [defs[key]]
    types = {'self': klass} if klass else {}
    for body in bodies:
      for n in ast.walk(body):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.value, ast.Call):
          made = resolve(n.value, module, modules, defs, types)
          if not made or not made.endswith('.__init__'):
            continue
          t = n.targets[0]
          name = (t.id if isinstance(t, ast.Name) else f'self.{t.attr}'
                  if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                  and t.value.id == 'self' else None)
          if name and (body is defs[key] or name.startswith('self.')):
            types[name] = made.removesuffix('.__init__')
    return types
  seen, counts, types = set(), collections.Counter(), {}
  entered = collections.Counter()

  def parents(node):
    out = {}
    for p in ast.walk(node):
      for c in ast.iter_child_nodes(p):
        out[c] = p
    return out

  def targets(call, module, loops):
    """The functions a call reaches: by name, through a loop over a tuple, or trainers."""
    f = call.func
    if isinstance(f, ast.Name) and f.id in loops:
      return [t for e in loops[f.id] for t in [resolve(ast.Call(func=e, args=[], keywords=[]),
                                                        module, modules, defs, {})] if t]
    if (isinstance(f, ast.Call) and isinstance(f.func, ast.Attribute) and
        f.func.attr == 'function' and f.args and isinstance(f.args[0], ast.Attribute)):
      ref = entry.get(f.args[0].attr, '')
      return [ref if ref in defs else None] if ref else []
    return [resolve(call, module, modules, defs, types)]

  def visit(key: str, stack: list):
    nonlocal types
    seen.add(key)
    module = key.split(':')[0]
    body = defs[key]
    types = instances(key)
    up = parents(body)
    level = tuples(modules, module)
    loops = {n.target.id: level[n.iter.id] for n in ast.walk(body)
             if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and
             isinstance(n.iter, ast.Name) and n.iter.id in level}
    here_types = types
    for call in [n for n in ast.walk(body) if isinstance(n, ast.Call)]:
      types = here_types
      for target in targets(call, module, loops):
        if target is None:
          continue
        here, there = room(module), room(target.split(':')[0])
        if there != here:
          counts['entries'] += 1
          entered[there] += 1
          if there in stack:
            counts['climbs'] += 1
          if not isinstance(up.get(call), ast.Expr):
            counts['returns'] += 1
        if target not in seen:
          visit(target, stack + [here] if there != here else stack)

  visit(start, [])
  counts['rooms'] = len([r for r in entered if r != room(start.split(':')[0])])
  return {'counts': dict(counts), 'entered': dict(entered)}


def main(tree: str, starts=STARTS) -> None:
  for start in starts:
    r = walk(tree, start)
    c = r['counts']
    top = ', '.join(f'{m} {n}' for m, n in
                    sorted(r['entered'].items(), key=lambda kv: -kv[1])[:6])
    print(f"{start}: {c.get('rooms', 0)} rooms entered, {c.get('entries', 0)} entries, "
          f"{c.get('climbs', 0)} climbs back up, {c.get('returns', 0)} returns; most entered: "
          f'{top}')


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:] or STARTS)
