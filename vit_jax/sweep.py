r"""Seed sweeps: one config over seeds and a grid of overrides, one workdir per run.

  python -m vit_jax.sweep --config configs/register.py:quick --seeds 0,1,2,3,4 \
      --grid model.num_registers=4,8 --grid optim.lr=1e-3,2e-3 --root runs/sweep
  python -m vit_jax.sweep ... --slurm launch/slurm.sbatch [--dry-run]
  python -m vit_jax.analysis.scoreboard --out results/sweep.md runs/sweep

The runs are the product of --seeds and every --grid (key=v1,v2,...); --set key=value
applies to all of them without naming the workdir. Each run's workdir under --root is
named from its grid values and seed (`model.num_registers=4__optim.lr=1e-3__seed=0`)
and holds sweep.json (the config, seed, grid and --set values; the scoreboard groups
runs by it). Every run's config is built and checked (preflight) before the first run
starts: a bad key or value is one line naming it.

Here the runs go one after another, each `python -m vit_jax.main` with its output in
<workdir>/train.log; a finished run (metrics.csv at config.total_epochs) is skipped, an
unfinished one resumes, a failed one is reported and the sweep goes on, exiting 1 at
the end. With --slurm SCRIPT each unfinished run is one `sbatch SCRIPT` (CONFIG and
WORKDIR in its environment, the overrides as its arguments, as launch/slurm.sbatch
takes them); --dry-run prints the commands and runs nothing.
"""
import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys

from vit_jax import files

SWEEP_FILE = 'sweep.json'
LOG_FILE = 'train.log'
INTERRUPTED = 130     # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def parse_list(text: str, what: str) -> list[str]:
  values = [v.strip() for v in text.split(',')]
  if not text.strip() or any(not v for v in values):
    raise ValueError(f'{what}={text!r} needs comma-separated values, e.g. 1e-3,2e-3')
  return values


def parse_seeds(text: str) -> list[int]:
  values = parse_list(text, '--seeds')
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--seeds={text!r} must be comma-separated integers, e.g. 0,1,2') from None
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds={text!r} repeats a seed')
  return seeds


def parse_pairs(items: list[str], what: str, many: bool) -> dict:
  """['key=v1,v2', ...] -> {key: [v1, v2]} (many) or {key: value}."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('--config.')
    if not sep or not key:
      raise ValueError(f'{what} {item!r} must be KEY=VALUE' + (',VALUE...' if many else ''))
    if key == 'seed':
      raise ValueError(f'{what} {item!r}: give seeds with --seeds')
    if key in out:
      raise ValueError(f'{what} names {key!r} twice')
    out[key] = parse_list(value, f'{what} {key}') if many else value
  return out


def points(seeds: list[int], grid: dict) -> list[dict]:
  """Every run's overrides (its grid values, then the seed): grid point by grid point,
  each over all seeds."""
  keys = list(grid)
  runs = []
  for values in itertools.product(*(grid[k] for k in keys)):
    for seed in seeds:
      runs.append({**dict(zip(keys, values)), 'seed': str(seed)})
  return runs


def run_name(overrides: dict) -> str:
  """The workdir name of one run: its grid values and seed, 'key=value' joined by '__'."""
  return '__'.join(f'{k}={v}'.replace(os.sep, '_') for k, v in overrides.items())


def build_config(config_arg: str, overrides: dict):
  """The config main would build from --config and these --config.KEY=VALUE overrides,
  parsed by the same flag parser; a bad key or value is one line."""
  from absl import flags
  from ml_collections import config_flags
  path = config_arg.split(':', 1)[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--config file {path!r} not found')
  argv = ['sweep', f'--config={config_arg}'] + [f'--config.{k}={v}' for k, v in overrides.items()]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
  except (KeyError, AttributeError) as e:
    key = next((k for k in overrides if k.split('.')[-1] in str(e) or k in str(e)), None)
    raise ValueError(f'unknown config key {key or str(e)!r} in {config_arg}') from None
  except (flags.Error, ValueError, TypeError) as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise ValueError(f'{" ".join(lines[-1:]) or e} (in {run_name(overrides)})') from None
  return values.config


def check_keys(config, config_arg: str, keys) -> None:
  """Each --grid / --set key names a field of the config; else one line with the nearest."""
  import difflib
  for key in keys:
    node, path = config, []
    for part in key.split('.'):
      fields = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in fields:
        near = difflib.get_close_matches(part, fields, n=1)
        where = '.'.join(path) or 'the config'
        raise ValueError(f'unknown config key {key!r} in {config_arg}: {where} has no '
                         f'{part!r}' + (f'; did you mean {".".join(path + near)!r}?' if near
                                        else ''))
      node, path = node[part], path + [part]


def is_finished(workdir: str, total_epochs: int) -> bool:
  from vit_jax.train import metrics_io
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  return bool(rows) and int(rows[-1]['epoch']) >= total_epochs


def plan(args) -> list[dict]:
  """Every run, its config built and checked, before anything is run or written."""
  from vit_jax import preflight
  seeds = parse_seeds(args.seeds)
  grid = parse_pairs(args.grid, '--grid', many=True)
  fixed = parse_pairs(args.set, '--set', many=False)
  clash = sorted(set(grid) & set(fixed))
  if clash:
    raise ValueError(f'{clash[0]!r} is in both --grid and --set')
  check_keys(build_config(args.config, {}), args.config, list(grid) + list(fixed))
  names = [run_name(p) for p in points(seeds, grid)]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f'two grid points would share the workdir {twice[0]!r} (their values '
                     f'differ only in {os.sep!r}, which names turn into _)')
  runs = []
  for point in points(seeds, grid):
    overrides = {**fixed, **point}
    config = build_config(args.config, overrides)
    workdir = os.path.join(args.root, run_name(point))
    record = {'config': args.config, 'seed': int(point['seed']),
              'grid': {k: point[k] for k in grid}, 'set': fixed}
    try:
      preflight.check(config, workdir)
    except (ValueError, FileNotFoundError) as e:
      raise ValueError(f'{run_name(point)}: {e}') from None
    sweep_file = os.path.join(workdir, SWEEP_FILE)
    if os.path.exists(sweep_file):
      with open(sweep_file) as f:
        old = json.load(f)
      if old != record:
        raise ValueError(f'{workdir!r} was made by another sweep ({old}); use another --root '
                         'or the same --config / --grid / --set')
    runs.append({'name': run_name(point), 'workdir': workdir, 'overrides': overrides,
                 'record': record, 'finished': is_finished(workdir, config.total_epochs)})
  return runs


def main_command(args, run) -> list[str]:
  return [sys.executable, '-m', 'vit_jax.main', '--config', args.config,
          '--workdir', run['workdir']] + [f'--config.{k}={v}' for k, v in run['overrides'].items()]


def slurm_command(args, run) -> list[str]:
  return (['sbatch', f'--job-name=sweep:{run["name"]}',
           f'--output={os.path.join(run["workdir"], "slurm-%j.out")}',
           f'--export=ALL,CONFIG={args.config},WORKDIR={run["workdir"]}', args.slurm] +
          [f'--config.{k}={v}' for k, v in run['overrides'].items()])


def run_local(args, runs, env, at: dict) -> list[str]:
  """Each unfinished run in turn; the names of those that failed. at['run']: the one under
  way, for the line a Ctrl-C gets."""
  failed = []
  for i, run in enumerate(runs, 1):
    tag = at['run'] = f'[{i}/{len(runs)}] {run["name"]}'
    if run['finished']:
      print(f'{tag}: finished, skipped', flush=True)
      continue
    os.makedirs(run['workdir'], exist_ok=True)
    files.write_json(os.path.join(run['workdir'], SWEEP_FILE), run['record'])
    log = os.path.join(run['workdir'], LOG_FILE)
    print(f'{tag}: running, output in {log}', flush=True)
    with open(log, 'a') as f:
      rc = subprocess.call(main_command(args, run), stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc:
      with open(log) as f:
        last = ([l.strip() for l in f if l.strip()] or [''])[-1]
      print(f'{tag}: FAILED (exit code {rc}): {last}', flush=True)
      failed.append(run['name'])
    else:
      print(f'{tag}: done', flush=True)
  return failed


def run_slurm(args, runs, env) -> list[str]:
  failed = []
  for run in runs:
    if run['finished']:
      print(f'# {run["name"]}: finished, skipped', flush=True)
      continue
    command = slurm_command(args, run)
    if args.dry_run:
      print(shlex.join(command), flush=True)
      continue
    os.makedirs(run['workdir'], exist_ok=True)
    files.write_json(os.path.join(run['workdir'], SWEEP_FILE), run['record'])
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    print(f'{run["name"]}: {(proc.stdout or proc.stderr).strip()}', flush=True)
    if proc.returncode:
      failed.append(run['name'])
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.sweep', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='configs/FILE.py[:arg], as for main')
  parser.add_argument('--seeds', default='0', help='comma-separated seeds (config.seed)')
  parser.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2',
                      help='a config key and its values; several --grid make a product')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='an override for every run (not part of the workdir names)')
  parser.add_argument('--root', required=True, help='folder of the runs\' workdirs')
  parser.add_argument('--slurm', default='', metavar='SCRIPT',
                      help='submit one sbatch SCRIPT per run (launch/slurm.sbatch)')
  parser.add_argument('--dry-run', action='store_true', help='with --slurm: print, submit nothing')
  args = parser.parse_args(argv)
  if args.dry_run and not args.slurm:
    parser.error('--dry-run goes with --slurm')
  if args.slurm and not os.path.isfile(args.slurm):
    parser.error(f'--slurm script {args.slurm!r} not found')
  if args.slurm and ',' in args.config + args.root:   # sbatch --export splits at commas
    parser.error(f'with --slurm, --config and --root cannot hold a comma ({args.config!r}, '
                 f'{args.root!r})')
  # The runs (and sbatch, whose --export=ALL passes it on) get this environment; the
  # checks here stay off the accelerators the runs use.
  env = dict(os.environ)
  os.environ['JAX_PLATFORMS'] = 'cpu'
  try:
    runs = plan(args)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2
  finally:
    os.environ.clear()
    os.environ.update(env)
  todo = sum(not r['finished'] for r in runs)
  print(f'sweep: {len(runs)} runs under {args.root}, {len(runs) - todo} finished', flush=True)
  at = {'run': None}
  try:
    failed = run_slurm(args, runs, env) if args.slurm else run_local(args, runs, env, at)
  except KeyboardInterrupt:
    where = f' during {at["run"]}' if at['run'] else ''
    print(f'sweep: interrupted (Ctrl-C){where}; finished runs are kept and an unfinished one '
          'resumes: run the same command to go on', file=sys.stderr, flush=True)
    return INTERRUPTED
  if failed:
    print(f'sweep: {len(failed)} of {len(runs)} runs failed: {", ".join(failed)}',
          file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except KeyboardInterrupt:     # while its runs are planned and checked
    print('sweep: interrupted (Ctrl-C) before any run', file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)
