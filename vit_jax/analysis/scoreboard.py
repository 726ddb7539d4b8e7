r"""A scoreboard across training workdirs, and a head-to-head table against the first.

  python -m vit_jax.analysis.scoreboard --out results/scoreboard_quick.md \
      runs/vanilla_quick runs/register_quick runs/sdpa_gated_quick runs/value_gated_quick
  python -m vit_jax.analysis.scoreboard --out results/sweep.md runs/sweep   # a sweep's root

Per run: best validation top-1 and its epoch, parameters, median images/s of
the train step, the final epoch's outlier ratio and, where the workdir has
been analysed (config.trainer=analyze), gate mean and sparsity and the
attention-sink share of the last block. A folder without metrics.csv stands for
the workdirs below it (a sweep's --root). Runs that differ only in their seed
(the same sweep.json but its seed; without one, the same config.json but its
seed) are one variant: its table gives the number of seeds n and the mean and
sample standard deviation (ddof=1) of the best and the final validation top-1.
Writes the markdown tables to --out and the same numbers as JSON beside it
({'runs': [...], 'over_seeds': [...]}).
"""
import argparse
import json
import math
import os

import numpy as np

from vit_jax import exits
from vit_jax import files
from vit_jax.train import checkpoint
from vit_jax.train import metrics_io


def _param_count(workdir: str) -> int:
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = checkpoint.saved_steps(ckpt)
  if not steps:
    return 0
  shapes = checkpoint.saved_param_shapes(os.path.join(ckpt, str(steps[-1])))
  return sum(math.prod(s) for s in shapes.values())


def row(workdir: str, name: str | None = None) -> dict:
  """The scoreboard numbers of one workdir; a one-line error if it has no metrics."""
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  if not rows:
    raise FileNotFoundError(f'{workdir!r} has no metrics.csv rows; expected a training workdir')
  best = max(rows, key=lambda r: float(r['val_acc1']))
  speeds = sorted(float(r['images_per_s']) for r in rows)
  total = None
  if os.path.exists(os.path.join(workdir, 'config.json')):
    with open(os.path.join(workdir, 'config.json')) as f:
      total = json.load(f).get('total_epochs')
  out = {'run': name or os.path.basename(os.path.normpath(workdir)), 'workdir': workdir,
         'total_epochs': total,
         'best_val_acc1': float(best['val_acc1']), 'best_epoch': int(best['epoch']),
         'epochs': int(rows[-1]['epoch']), 'final_val_acc1': float(rows[-1]['val_acc1']),
         'params': _param_count(workdir), 'images_per_s': speeds[len(speeds) // 2],
         'final_outlier_ratio': float(rows[-1]['l2_outlier_ratio']),
         'gate_mean': None, 'gate_sparsity': None, 'last_block_sink_share': None}
  analysis = os.path.join(workdir, 'analysis.json')
  if os.path.exists(analysis):
    with open(analysis) as f:
      a = json.load(f)
    out['params'] = a['num_params']
    out['last_block_sink_share'] = a['layers'][-1]['sink_share']
    if a['gates']:
      out['gate_mean'], out['gate_sparsity'] = a['gates']['mean'], a['gates']['sparsity']
  return out


def workdirs(paths: list[str]) -> list[tuple[str, str]]:
  """(workdir, name) of each path that holds metrics.csv (named by its folder), or else of
  every such folder below it (sorted, named by their path from the given folder's name
  on: runs/sweep/seed=0 given runs/sweep is 'sweep/seed=0')."""
  found = []
  for path in paths:
    if os.path.exists(os.path.join(path, 'metrics.csv')):
      found.append((path, os.path.basename(os.path.normpath(path))))
      continue
    below = sorted(root for root, _, files in os.walk(path) if 'metrics.csv' in files)
    if not below:
      raise FileNotFoundError(f'{path!r} has no metrics.csv, nor any folder below it; '
                              'expected a training workdir or a sweep\'s --root')
    parent = os.path.dirname(os.path.normpath(path))
    found += [(w, os.path.relpath(w, parent or '.')) for w in below]
  return found


def variant(workdir: str) -> tuple[str, str]:
  """(what its seeds share, its name): sweep.json but the seed (named by its config and
  grid values), else config.json but the seed (named by the workdir), else the workdir
  alone."""
  for name in ('sweep.json', 'config.json'):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      seed = record.pop('seed', None)
      key = name + json.dumps(record, sort_keys=True)
      if name == 'sweep.json':
        grid = ' '.join(f'{k}={v}' for k, v in record['grid'].items())
        return key, f"{record['config']} {grid}".strip()
      base = os.path.basename(os.path.normpath(workdir))
      return key, base.replace(f'seed={seed}', '').replace(f'seed{seed}', '').strip('_-') or base
  return workdir, os.path.basename(os.path.normpath(workdir))   # a variant of its own


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
  """The mean (None for no value) and the sample standard deviation (ddof=1; None for
  fewer than two values)."""
  a = np.asarray(values, np.float64)
  return (float(a.mean()) if len(a) else None), (float(a.std(ddof=1)) if len(a) > 1 else None)


def over_seeds(rows: list[dict]) -> list[dict]:
  """One entry per variant (runs that differ only in the seed), in first-seen order; a run
  that has not reached its config's total_epochs is left out of the numbers and named."""
  groups = {}
  for r in rows:
    key, name = variant(r['workdir'])
    groups.setdefault(key, (name, []))[1].append(r)
  out = []
  for name, all_runs in groups.values():
    runs = [r for r in all_runs if r['total_epochs'] is None or r['epochs'] >= r['total_epochs']]
    unfinished = [r['run'] for r in all_runs if r not in runs]
    if not runs:
      out.append({'variant': name, 'n': 0, 'runs': [], 'unfinished': unfinished})
      continue
    best_mean, best_std = mean_std([r['best_val_acc1'] for r in runs])
    final_mean, final_std = mean_std([r['final_val_acc1'] for r in runs])
    out.append({'variant': name, 'n': len(runs), 'runs': [r['run'] for r in runs],
                'unfinished': unfinished,
                'best_val_acc1_mean': best_mean, 'best_val_acc1_std': best_std,
                'final_val_acc1_mean': final_mean, 'final_val_acc1_std': final_std,
                'epochs': sorted({r['epochs'] for r in runs}), 'params': runs[0]['params'],
                'images_per_s_median': float(np.median([r['images_per_s'] for r in runs]))})
  return out


def _pm(mean, std):
  return f'{mean:.2f} ± {std:.2f}' if std is not None else f'{mean:.2f} (one seed)'


def seeds_markdown(groups: list[dict]) -> str:
  lines = ['Over seeds (mean ± sample standard deviation, ddof=1, over the n finished seeds):',
           '', '| variant | n | best val top-1 (%) | final val top-1 (%) | epochs | params '
           '| images/s (median run) | unfinished, left out |', '|---|---|---|---|---|---|---|---|']
  for g in groups:
    left_out = ', '.join(g['unfinished']) or '-'
    if not g['n']:
      lines.append(f"| {g['variant']} | 0 | - | - | - | - | - | {left_out} |")
      continue
    lines.append(f"| {g['variant']} | {g['n']} "
                 f"| {_pm(g['best_val_acc1_mean'], g['best_val_acc1_std'])} "
                 f"| {_pm(g['final_val_acc1_mean'], g['final_val_acc1_std'])} "
                 f"| {', '.join(map(str, g['epochs']))} | {g['params']:,} "
                 f"| {g['images_per_s_median']:.0f} | {left_out} |")
  return '\n'.join(lines) + '\n'


def _fmt(v, spec):
  return '-' if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
  lines = ['| run | best val top-1 | at epoch | epochs | params | images/s | final outlier ratio '
           '| gate mean | gate sparsity | last-block sink share |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(rows, key=lambda r: -r['best_val_acc1']):
    lines.append(f"| {r['run']} | {r['best_val_acc1']:.2f}% | {r['best_epoch']} | {r['epochs']} "
                 f"| {r['params']:,} | {r['images_per_s']:.0f} | {r['final_outlier_ratio']:.4f} "
                 f"| {_fmt(r['gate_mean'], '.3f')} | {_fmt(r['gate_sparsity'], '.3f')} "
                 f"| {_fmt(r['last_block_sink_share'], '.3f')} |")
  base = rows[0]
  lines += ['', f"Head to head against {base['run']} (the first run given):", '',
            '| run | best val top-1 | params | difference in top-1 | params ratio | speed ratio |',
            '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['run']} | {r['best_val_acc1']:.2f}% | {r['params']:,} "
                 f"| {r['best_val_acc1'] - base['best_val_acc1']:+.2f} points "
                 f"| {r['params'] / max(base['params'], 1):.3f} "
                 f"| {r['images_per_s'] / base['images_per_s']:.2f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None):
  # argparse, not absl flags: this module is imported beside other flag owners.
  parser = argparse.ArgumentParser(prog='python -m vit_jax.analysis.scoreboard')
  parser.add_argument('--out', default='', help='markdown file to write (and .json beside it)')
  parser.add_argument('workdirs', nargs='+', help='training workdirs (or folders of them, '
                      'e.g. a sweep\'s --root); the first is the baseline')
  args = parser.parse_args(argv)
  missing = [w for w in args.workdirs if not os.path.isdir(w)]
  if missing:
    exits.fail(f'workdir {missing[0]!r} does not exist')
  try:
    rows = [row(w, name) for w, name in workdirs(args.workdirs)]
    groups = over_seeds(rows)
  except FileNotFoundError as e:
    exits.fail(str(e))
  table = markdown(rows)
  if len(groups) < len(rows):
    table = seeds_markdown(groups) + '\nPer run:\n\n' + table
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    files.write_text(args.out, table)
    files.write_json(os.path.splitext(args.out)[0] + '.json', {'runs': rows, 'over_seeds': groups})


if __name__ == '__main__':
  main()
