r"""Per-layer analysis numbers across variants, mean and spread over seeds.

  python -m vit_jax.analysis.compare --out results/fashion_mnist/s002_layers.md \
      runs/fmnist/s002

Reads analysis.json (config.trainer=analyze) of every workdir given or below it, groups
the runs that differ only in their seed (as the scoreboard does), and writes, for each
per-layer quantity, a table of block x variant (mean ± sample std over the seeds, n
given), the same numbers as JSON, and one figure (`<out>.png`) with a panel per
quantity: a line per variant against the block, error bars one std. A quantity a
variant does not have (gates without a gate, register norms without registers) is
left out of its column and its panel rather than drawn as zero.
"""
import argparse
import json
import os

import numpy as np

from vit_jax import exits
from vit_jax import files
from vit_jax.analysis import plots
from vit_jax.analysis import scoreboard

# analysis.json per-layer key -> (what it is, its unit or range)
QUANTITIES = {
    'gate_mean': ('mean gate value (G1 / G2)', 'sigmoid, 0-1'),
    'gate_sparsity': ('share of gate values below analysis.gate_sparse_below', '0-1'),
    'sink_rate_any': ('sink rate: share of heads with a sink (Gu et al.)', '0-1'),
    'cls_share': ('attention to the first token (cls), mean over queries and heads', '0-1'),
    'register_share': ('attention to the registers, mean over queries and heads', '0-1'),
    'l2_norm_max': ('largest patch-token norm in the residual stream', 'L2 norm'),
    'l2_outlier_ratio': ('share of outlier (high-norm) patch tokens (probe rule)', '0-1'),
    'max_over_median': ('largest / median patch-token norm', 'ratio'),
    'flat_outliers': ('share of the high-norm patch tokens on flat (background) patches',
                      '0-1'),
    'flat_base': ('share of all patch tokens on flat patches (flat_outliers\' base rate)',
                  '0-1'),
    'norm_cls': ('cls token norm in the residual stream', 'L2 norm'),
    'norm_register_max': ('largest register norm in the residual stream', 'L2 norm'),
    'norm_patch_median': ('median patch-token norm in the residual stream', 'L2 norm'),
    'act_max_abs': ('largest |activation| of the residual stream', 'absolute value'),
    'outlier_kurtosis': ('kurtosis of the activations over channels', 'Pearson'),
}

# Quantities that only a model with registers has; analysis.json now writes them as None
# without registers, but files written before did as 0: left out where the runs have no
# register norms.
NEEDS_REGISTERS = ('register_share',)


def load(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'analysis.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def per_layer(paths: list[str]) -> dict:
  """{variant: {'n': seeds, 'runs': [...], quantity: {'mean': [...], 'std': [...]}}} over
  the analysed runs (unanalysed ones are named under 'not_analysed')."""
  groups, missing = {}, []
  for workdir, name in scoreboard.workdirs(paths):
    a = load(workdir)
    if a is None:
      missing.append(name)
      continue
    _, variant = scoreboard.variant(workdir)
    groups.setdefault(variant, []).append((name, a['layers']))
  out = {}
  for variant, runs in groups.items():
    entry = {'n': len(runs), 'runs': [name for name, _ in runs]}
    registers = all(row.get('norm_register_max') is not None for _, l in runs for row in l)
    for key in QUANTITIES:
      values = [[row.get(key) for row in layers] for _, layers in runs]
      if any(v is None for run in values for v in run) or (
          key in NEEDS_REGISTERS and not registers):
        continue                                  # the variant has no such quantity
      a = np.asarray(values, np.float64)          # (seeds, blocks)
      entry[key] = {'mean': a.mean(0).tolist(),
                    'std': (a.std(0, ddof=1).tolist() if len(a) > 1 else None)}
    out[variant] = entry
  return {'variants': out, 'not_analysed': missing}


def _cell(q: dict, i: int) -> str:
  mean = q['mean'][i]
  fmt = '.3f' if abs(mean) < 10 else '.1f'
  return (f'{mean:{fmt}} ± {q["std"][i]:{fmt}}' if q['std'] is not None
          else f'{mean:{fmt}}')


def markdown(result: dict) -> str:
  variants = result['variants']
  names = list(variants)
  lines = ['Per block, mean ± sample standard deviation over seeds (n: '
           + ', '.join(f'{v} {variants[v]["n"]}' for v in names) + ').', '']
  for key, (what, unit) in QUANTITIES.items():
    have = [v for v in names if key in variants[v]]
    if not have:
      continue
    blocks = len(variants[have[0]][key]['mean'])
    lines += [f'**{what}** (`{key}`, {unit})', '',
              '| block | ' + ' | '.join(have) + ' |', '|---' * (len(have) + 1) + '|']
    for i in range(blocks):
      lines.append(f'| {i + 1} | ' + ' | '.join(_cell(variants[v][key], i) for v in have) + ' |')
    lines.append('')
  if result['not_analysed']:
    lines.append('Not analysed (no analysis.json), left out: '
                 + ', '.join(result['not_analysed']))
  return '\n'.join(lines) + '\n'


def figure(result: dict, keys: list[str]):
  """One panel per quantity any variant has; a line per variant with one-std error bars."""
  variants = result['variants']
  keys = [k for k in keys if any(k in v for v in variants.values())]
  cols = min(3, len(keys))
  rows = -(-len(keys) // cols)
  fig, axes = plots.plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows),
                                 squeeze=False, layout='constrained')
  for ax in axes.flat[len(keys):]:
    ax.remove()
  colour = {name: f'C{i}' for i, name in enumerate(variants)}   # one per variant, every panel
  for ax, key in zip(axes.flat, keys):
    what, unit = QUANTITIES[key]
    for name, v in variants.items():
      if key not in v:
        continue
      mean = np.asarray(v[key]['mean'])
      std = np.asarray(v[key]['std']) if v[key]['std'] is not None else None
      x = np.arange(1, len(mean) + 1)
      ax.errorbar(x, mean, yerr=std, marker='o', ms=3, capsize=2, label=name,
                  color=colour[name])
    ax.set_title(what, fontsize=8)
    ax.set_xlabel('block', fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.xaxis.set_major_locator(plots.MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
  return fig


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m vit_jax.analysis.compare')
  parser.add_argument('--out', required=True, help='markdown file (.json and .png beside it)')
  parser.add_argument('--plot', default=','.join(QUANTITIES),
                      help='comma-separated quantities to plot (analysis.json layer keys)')
  parser.add_argument('workdirs', nargs='+', help="workdirs or folders of them (a sweep's root)")
  args = parser.parse_args(argv)
  unknown = [k for k in args.plot.split(',') if k not in QUANTITIES]
  if unknown:
    exits.fail(f'--plot has {unknown[0]!r}; known: {", ".join(QUANTITIES)}')
  try:
    result = per_layer(args.workdirs)
  except FileNotFoundError as e:
    exits.fail(str(e))
  if not result['variants']:
    exits.fail(f'no analysed workdir (analysis.json) in {args.workdirs}; run '
             '--config.trainer=analyze on them first')
  text = markdown(result)
  print(text)
  base = os.path.splitext(args.out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  files.write_text(args.out, text)
  files.write_json(base + '.json', result)
  plots.save(figure(result, args.plot.split(',')), base + '.png')


if __name__ == '__main__':
  main()
