r"""A scoreboard across training workdirs, and a head-to-head table against the first.

  python -m vit_jax.analysis.scoreboard --out results/scoreboard_quick.md \
      runs/vanilla_quick runs/register_quick runs/sdpa_gated_quick runs/value_gated_quick

Per run: best validation top-1 and its epoch, parameters, median images/s of
the train step, the final epoch's outlier ratio and, where the workdir has
been analysed (config.trainer=analyze), gate mean and sparsity and the
attention-sink share of the last block. Writes the markdown table to --out
and the same numbers as JSON beside it.
"""
import argparse
import json
import math
import os
import sys

from vit_jax.train import checkpoint
from vit_jax.train import metrics_io


def _param_count(workdir: str) -> int:
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = checkpoint.saved_steps(ckpt)
  if not steps:
    return 0
  shapes = checkpoint.saved_param_shapes(os.path.join(ckpt, str(steps[-1])))
  return sum(math.prod(s) for s in shapes.values())


def row(workdir: str) -> dict:
  """The scoreboard numbers of one workdir; a one-line error if it has no metrics."""
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  if not rows:
    raise FileNotFoundError(f'{workdir!r} has no metrics.csv rows; expected a training workdir')
  best = max(rows, key=lambda r: float(r['val_acc1']))
  speeds = sorted(float(r['images_per_s']) for r in rows)
  out = {'run': os.path.basename(os.path.normpath(workdir)), 'workdir': workdir,
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
  parser.add_argument('workdirs', nargs='+', help='training workdirs; the first is the baseline')
  args = parser.parse_args(argv)
  missing = [w for w in args.workdirs if not os.path.isdir(w)]
  if missing:
    sys.exit(f'error: workdir {missing[0]!r} does not exist')
  try:
    rows = [row(w) for w in args.workdirs]
  except FileNotFoundError as e:
    sys.exit(f'error: {e}')
  table = markdown(rows)
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(table)
    with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
