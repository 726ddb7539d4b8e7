r"""The numbers of results/fashion_mnist.md from the committed runs (results/fashion_mnist/).

  python results/fashion_mnist/report.py      # writes results/fashion_mnist/summary.{md,json}

Reads results/fashion_mnist/runs/<study>/<run>/seed=N/ (metrics.csv, analysis.json,
sweep.json, train.log, as run_all.py copies them) and writes, per study, the top-1 over
seeds (n, mean ± sample std, every seed's value, wall time per run) and each comparison
the study asks for: the difference of the means, Welch's t and p (scipy) and whether the two sets of
seeds overlap. The per-layer analysis tables and figure come from
`python -m vit_jax.analysis.compare` (commands in results/fashion_mnist.md).
"""
import csv
import glob
import json
import os
import re

import numpy as np
import scipy.stats

from vit_jax.analysis import scoreboard

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, 'runs')


def read_run(path: str) -> dict:
  with open(os.path.join(path, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  acc = [float(r['val_acc1']) for r in rows]
  info = {}
  if os.path.exists(os.path.join(path, 'run.json')):   # run_all.py: wall time, machine load
    with open(os.path.join(path, 'run.json')) as f:
      info = json.load(f)
  train_s = sum(float(r['epoch_time_s']) for r in rows)
  log = os.path.join(path, 'train.log')
  resumed = False
  if os.path.exists(log):
    with open(log) as f:
      resumed = 'resumed from' in f.read()
  # run.json's wall time is the last sweep call's: for a run resumed after a kill it
  # covers the resumed part only, so the training time summed over epochs is kept too.
  wall = None if resumed else info.get('wall_s')
  return {'seed': int(re.search(r'seed=(\d+)', path).group(1)), 'best': max(acc),
          'final': acc[-1], 'epochs': len(acc), 'train_min': train_s / 60,
          'wall_min': None if wall is None else wall / 60, 'resumed': resumed,
          'load': info.get('load_avg'),
          'images_per_s': float(np.median([float(r['images_per_s']) for r in rows]))}


def runs(study: str, name: str) -> list[dict]:
  return sorted((read_run(p) for p in glob.glob(os.path.join(RUNS, study, name, 'seed=*'))
                 if os.path.exists(os.path.join(p, 'metrics.csv'))), key=lambda r: r['seed'])


def stats(values) -> dict:
  mean, std = scoreboard.mean_std(values)
  return {'n': len(values), 'mean': mean, 'std': std, 'values': [float(v) for v in values]}


def welch(a, b) -> dict:
  """b - a: the difference of the means, Welch's t, its degrees of freedom and two-sided p
  (scipy), and whether the seeds' ranges overlap."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  out = {'diff': float(b.mean() - a.mean()) if len(a) and len(b) else None, 't': None,
         'df': None, 'p': None, 'ranges_overlap': None}
  if len(a) > 1 and len(b) > 1:
    r = scipy.stats.ttest_ind(b, a, equal_var=False)
    out.update(t=float(r.statistic), df=float(r.df), p=float(r.pvalue),
               ranges_overlap=bool(a.max() >= b.min() and b.max() >= a.min()))
  return out


def fmt(s: dict) -> str:
  if not s['n']:
    return '-'
  if s['std'] is None:
    return f"{s['mean']:.2f} (one seed)"
  return f"{s['mean']:.2f} ± {s['std']:.2f}"


def minutes(r: dict) -> str:
  """'13.2 (14.9, load 1.1-2.3)': epochs' training time, then the run's wall time and the
  load average at its start / end (above ~2 the 2-core machine was shared), or 'resumed'."""
  if r['wall_min'] is None:
    return f"{r['train_min']:.1f} (resumed)" if r['resumed'] else f"{r['train_min']:.1f}"
  load = f", load {r['load'][0]:.1f}-{r['load'][1]:.1f}" if r['load'] else ''
  return f"{r['train_min']:.1f} ({r['wall_min']:.1f}{load})"


def verdict(w: dict) -> str:
  """Beyond the seed spread only when Welch's test says so at 5% (with 2-3 seeds a wide
  t is needed: at df ~2, |t| > 4.3) and no seed of one side reaches the other's range."""
  if w['t'] is None:
    return 'too few seeds'
  if w['p'] < 0.05 and not w['ranges_overlap']:
    return 'beyond the seed spread'
  return 'inside the seed spread'


def compared(w: dict | None) -> str:
  if w is None or w['diff'] is None:
    return '-'
  if w['t'] is None:
    return f"{w['diff']:+.2f} (too few seeds)"
  p = f"p = {w['p']:.3f}" if w['p'] >= 0.001 else 'p < 0.001'
  return f"{w['diff']:+.2f}, t = {w['t']:.2f}, {p} ({verdict(w)})"


def table(study: str, names: list[str], base: str) -> tuple[list[str], dict]:
  """The best top-1 picks the epoch on the test images themselves (Fashion-MNIST has no
  validation split here), so each comparison is made on the final epoch's top-1 too."""
  lines = ['| run | n | best top-1 (%) | final top-1 (%) | seeds (final) | training minutes '
           f'(wall, load avg) per seed | final vs {base}: difference, Welch t, p | '
           f'best vs {base} |', '|---|---|---|---|---|---|---|---|']
  out = {}
  base_runs = runs(study, base)
  for name in names:
    rs = runs(study, name)
    best, final = stats([r['best'] for r in rs]), stats([r['final'] for r in rs])
    w = w_final = None
    if name != base:
      w = welch([r['best'] for r in base_runs], best['values'])
      w_final = welch([r['final'] for r in base_runs], final['values'])
    out[name] = {'best': best, 'final': final, 'vs_base': w, 'final_vs_base': w_final,
                 'train_min': [round(r['train_min'], 1) for r in rs],
                 'wall_min': [None if r['wall_min'] is None else round(r['wall_min'], 1)
                              for r in rs],
                 'load_avg': [r['load'] for r in rs],
                 'images_per_s': [round(r['images_per_s'], 1) for r in rs],
                 'seeds': [r['seed'] for r in rs]}
    lines.append(f"| {name} | {best['n']} | {fmt(best)} | {fmt(final)} | "
                 f"{', '.join(f'{v:.2f}' for v in final['values'])} | "
                 f"{'; '.join(minutes(r) for r in rs)} | {compared(w_final)} | "
                 f"{compared(w)} |")
  return lines, out


def main():
  md, js = [], {}
  sections = (('s002', ['vanilla', 'register', 'sdpa_gated', 'value_gated'], 'vanilla'),
              ('s001', ['student_none', 'student_hard'], 'student_none'),
              ('s000', ['baseline', 'svd'], 'baseline'))
  for study, names, base in sections:
    lines, js[study] = table(study, names, base)
    md += [f'### {study}', ''] + lines + ['']
    speeds = {n: js[study][n]['images_per_s'] for n in names if js[study][n]['images_per_s']}
    if len(speeds) > 1:   # the runs' own training speed (the median epoch of each seed)
      mean = {n: float(np.mean(v)) for n, v in speeds.items()}
      md += ['Training images/s (median epoch, mean over seeds; the runs ran one after '
             'another on this machine): ' + ', '.join(
                 f'{n} {v:.0f}' + (f' ({mean[base] / v:.2f}x the step time of {base})'
                                   if n != base and base in mean else '')
                 for n, v in mean.items()) + '.', '']
  teacher = os.path.join(RUNS, 's001', 'teacher', 'metrics.csv')
  if os.path.exists(teacher):
    with open(teacher) as f:
      acc = [float(r['val_acc1']) for r in csv.DictReader(f)]
    js['teacher'] = {'best': max(acc), 'final': acc[-1], 'epochs': len(acc)}
    md += [f"Teacher (ResNet, configs/teacher_resnet.py:fmnist): best {max(acc):.2f}%, final "
           f"{acc[-1]:.2f}% after {len(acc)} epochs.", '']
  js['best'] = {}
  for path in sorted(glob.glob(os.path.join(RUNS, 'best', '*'))):   # one seed each
    name = os.path.basename(path)
    for r in runs('best', name):
      js['best'][name] = r
      md += [f"Best in ~30 minutes ({name}, seed {r['seed']}): best {r['best']:.2f}%, final "
             f"{r['final']:.2f}% after {r['epochs']} epochs, {minutes(r)} minutes.", '']
  peer = os.path.join(HERE, 'peer.json')   # bench peer: ours and timm, the same seeds
  if os.path.exists(peer):
    with open(peer) as f:
      rounds = [r for r in json.load(f)['rounds'] if 'timm' in r]
    sides = {k: [r[k]['val_acc1'][-1] for r in rounds] for k in ('ours', 'timm')}
    w = welch(sides['timm'], sides['ours'])
    js['peer'] = {k: stats(v) for k, v in sides.items()} | {'ours_minus_timm': w}
    md += [f"Peer (peer.json, final top-1, seeds {[r['seed'] for r in rounds]}): ours "
           f"{fmt(js['peer']['ours'])}, timm + torch {fmt(js['peer']['timm'])}: "
           + (f"{w['diff']:+.2f}, t = {w['t']:.2f}, p = {w['p']:.3f} ({verdict(w)})."
              if w['t'] is not None else verdict(w) + '.'), '']
  with open(os.path.join(HERE, 'summary.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  with open(os.path.join(HERE, 'summary.json'), 'w') as f:
    json.dump(js, f, indent=1)
  print('\n'.join(md))


if __name__ == '__main__':
  main()
