"""The study's outputs: a printed table, crystallize.json, and plots/*.png."""
import os

import numpy as np

from vit_jax import files


def table(r: dict) -> str:
  base = r['ppl_baseline']
  rows = [f'{r["model"]}',
          f'text: {r["text"]}; {r["eval_blocks"]} blocks of {r["seq_len"]} tokens '
          f'({r["eval_tokens"]} predicted), bases from '
          + (f'the first {r["calib_blocks"]} of them (seed 003)' if r.get('calib_in_scored')
             else f'{r["calib_blocks"]} earlier blocks'),
          f'crystallized layers {r["layers"]} of {r["n_layer"]}, d_head {r["d_head"]}',
          '',
          '| model | d_r | PPL | delta PPL | top-1 loss recovered |',
          '|---|---|---|---|---|',
          f'| baseline (unmodified) | - | {base:.4f} | - | - |',
          f'| A top1 | 0 | {r["ppl_top1"]:.4f} | {r["ppl_top1"] - base:+.4f} | 0% |',
          f'| B full | {r["d_head"]} | {r["ppl_full"]:.4f} | {r["full_minus_baseline"]:+.2e} | - |']
  for c in r['lowrank']:
    share = '-' if c['recovered'] is None else f'{100 * c["recovered"]:.1f}%'
    note = ' (= full attention: d_r >= d_head)' if c.get('equals_full') else ''
    rows.append(f'| C lowrank | {c["d_r"]}{note} | {c["ppl"]:.4f} | {c["delta_ppl"]:+.4f} | '
                f'{share} |')
  dims = [s['effective_dim'] for s in r['spectra']]
  rows += ['', f'residual effective dimension ({r["variance_threshold"]:.0%} variance) per '
           f'(layer, head): mean {np.mean(dims):.2f}, min {min(dims)}, max {max(dims)} of '
           f'{r["d_head"]}']
  for layer in r['layers']:
    per_head = [s['effective_dim'] for s in r['spectra'] if s['layer'] == layer]
    rows.append(f'  layer {layer}: ' + ' '.join(str(d) for d in per_head))
  if r['top1_depth_sweep']:
    rows += ['', '| top-1 on the deepest k layers | PPL | delta PPL |', '|---|---|---|']
    rows += [f'| k={d["num_layers"]} {d["layers"]} | {d["ppl"]:.4f} | {d["delta_ppl"]:+.4f} |'
             for d in r['top1_depth_sweep']]
  rows += ['', f'verdict: {r["verdict"]}']
  return '\n'.join(rows)


def write_json(r: dict, workdir: str) -> str:
  path = os.path.join(workdir, 'crystallize.json')
  files.write_json(path, r)
  return path


def plot(r: dict, workdir: str) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  out = os.path.join(workdir, 'plots')
  os.makedirs(out, exist_ok=True)
  paths = []

  fig, ax = plt.subplots(figsize=(5.5, 4))
  d_r = [c['d_r'] for c in r['lowrank']]
  ax.plot(d_r, [c['delta_ppl'] for c in r['lowrank']], 'o-', label='C: top-1 + rank-d_r residual')
  ax.axhline(r['ppl_top1'] - r['ppl_baseline'], color='tab:red', ls='--', label='A: top-1')
  ax.axhline(r['full_minus_baseline'], color='gray', ls=':', label='B: full')
  ax.set(xscale='log', xlabel='d_r', ylabel='PPL - baseline PPL',
         title=f'layers {r["layers"]}, d_head {r["d_head"]}')
  ax.set_xticks(d_r, [str(x) for x in d_r])
  ax.legend()
  paths.append(os.path.join(out, 'delta_ppl_vs_dr.png'))
  fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)

  layers = r['layers']
  fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False,
                           sharey=True)
  for ax, layer in zip(axes[0], layers):
    for s in (s for s in r['spectra'] if s['layer'] == layer):
      ax.plot(np.arange(1, len(s['cumvar']) + 1), s['cumvar'], lw=1, label=f'head {s["head"]}')
    ax.axhline(r['variance_threshold'], color='gray', ls=':')
    ax.set(title=f'layer {layer}', xlabel='r', xscale='log')
  axes[0, 0].set_ylabel('cumulative variance of eps')
  axes[0, -1].legend(fontsize=6)
  paths.append(os.path.join(out, 'residual_spectra.png'))
  fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)

  if r['top1_depth_sweep']:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    k = [d['num_layers'] for d in r['top1_depth_sweep']]
    ax.plot(k, [d['ppl'] for d in r['top1_depth_sweep']], 'o-')
    ax.axhline(r['ppl_baseline'], color='gray', ls=':', label='baseline')
    ax.set(xlabel='deepest layers with top-1 attention', ylabel='PPL', yscale='log')
    ax.legend()
    paths.append(os.path.join(out, 'top1_depth_sweep.png'))
    fig.tight_layout(), fig.savefig(paths[-1], dpi=110), plt.close(fig)
  return paths
