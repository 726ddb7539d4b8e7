"""matplotlib figures of the analysis; each function returns a Figure, `save` writes a PNG."""
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from vit_jax import files  # noqa: E402


def save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=90, bbox_inches='tight')
  plt.close(fig)
  return path


def _scaled_plot(ax, x, y, label, *args, **kw):
  """y against x on a log axis when y spans more than a factor 10, else on a linear axis
  from 0 with plain tick labels (a log axis over 1.52211..1.52212 repeats one label)."""
  y = np.asarray([np.nan if v is None else v for v in y], np.float64)
  ax.plot(x, y, *args, **kw)
  finite = y[np.isfinite(y) & (y > 0)]
  if finite.size and finite.max() > 10 * finite.min():
    ax.set_yscale('log')
    label += ' (log scale)'
  else:
    ax.set_ylim(0, 1.1 * max(finite.max(), 1e-30) if finite.size else 1)
    ax.ticklabel_format(axis='y', style='plain', useOffset=False)
  ax.set_ylabel(label, fontsize=8)


def _integer_ticks(*axes):
  for axis in axes:
    axis.set_major_locator(MaxNLocator(integer=True))


def pick_epochs(epochs: list[int], at_most: int = 6) -> list[int]:
  """Evenly spaced epochs, always the first and the last."""
  epochs = sorted(epochs)
  if len(epochs) <= at_most:
    return epochs
  idx = np.unique(np.linspace(0, len(epochs) - 1, at_most).round().astype(int))
  return [epochs[i] for i in idx]


def norm_histograms(epoch_norms: dict, outlier_lines: dict):
  """One histogram of output-token L2 norms per epoch (log counts show a second mode)."""
  epochs = sorted(epoch_norms)
  cols = min(3, len(epochs))
  rows = math.ceil(len(epochs) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False,
                           layout='constrained')
  for ax in axes.flat[len(epochs):]:
    ax.remove()
  for ax, epoch in zip(axes.flat, epochs):
    norms = np.ravel(epoch_norms[epoch])
    ax.hist(norms, bins=60, color='tab:blue', log=True)
    ax.axvline(outlier_lines[epoch], color='tab:red', ls='--', lw=1, label='outlier rule')
    ax.set_title(f'epoch {epoch}', fontsize=9)
    ax.set_xlabel('token L2 norm', fontsize=8)
  axes.flat[0].legend(fontsize=7)
  fig.suptitle('Output patch-token norms of the probe images', fontsize=10)
  return fig


def layer_norms(layer_norms: np.ndarray, per_epoch: dict | None = None):
  """Per-block norm distributions at the analysed checkpoint; the mean per block over epochs."""
  n_layers = layer_norms.shape[0]
  fig, axes = plt.subplots(1, 2 if per_epoch else 1, figsize=(11 if per_epoch else 6, 3.4),
                           squeeze=False, layout='constrained')
  ax = axes[0, 0]
  ax.boxplot([np.ravel(n) for n in layer_norms], whis=(0, 100), widths=0.6)
  ax.set_xticks(range(1, n_layers + 1), [str(i) for i in range(1, n_layers + 1)])
  ax.set_xlabel('block')
  ax.set_ylabel('patch-token L2 norm')
  ax.set_title('residual stream after each block (min/quartiles/max)', fontsize=9)
  if per_epoch:
    epochs = sorted(per_epoch)
    grid = np.array([[np.mean(per_epoch[e][l]) for e in epochs] for l in range(n_layers)])
    im = axes[0, 1].imshow(grid, aspect='auto', origin='lower', cmap='viridis', vmin=0,
                           extent=(epochs[0] - 0.5, epochs[-1] + 0.5, 0.5, n_layers + 0.5))
    axes[0, 1].set_xlabel('epoch')
    axes[0, 1].set_ylabel('block')
    axes[0, 1].set_title('mean patch-token norm per block', fontsize=9)
    _epoch_ticks(axes[0, 1], epochs)
    _integer_ticks(axes[0, 1].yaxis)
    fig.colorbar(im, ax=axes[0, 1], label='mean patch-token L2 norm')
  return fig


def _epoch_ticks(ax, epochs):
  """Integer epoch ticks; a single epoch gets exactly its own tick."""
  if len(epochs) == 1:
    ax.set_xticks(epochs)
  else:
    _integer_ticks(ax.xaxis)


def _bare(ax, title=None):
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)


def attention_maps(images: np.ndarray, maps: np.ndarray, titles: list, quantity: str,
                   uniform: float, uniform_label: str, vmax: float | None = None):
  """Rows: images; columns: the image, then one map per column ((B, C, N) patch values).

  Every map shares one colour scale, from 0 to the largest value of all maps (or
  vmax), with one colour bar on which the uniform level is marked: maps are shown
  beside the image, not overlaid, so near-uniform attention looks flat.
  """
  b, c, n = maps.shape
  side = int(round(math.sqrt(n)))
  vmax = float(maps.max()) if vmax is None else vmax
  vmax = max(vmax, uniform * 1.05)
  fig, axes = plt.subplots(b, c + 1, figsize=(1.6 * (c + 1) + 0.9, 1.6 * b), squeeze=False,
                           layout='constrained')
  im = None
  for i in range(b):
    axes[i, 0].imshow(images[i], interpolation='nearest')
    _bare(axes[i, 0], 'image' if i == 0 else None)
    for j in range(c):
      im = axes[i, j + 1].imshow(maps[i, j].reshape(side, side), cmap='viridis', vmin=0,
                                 vmax=vmax, interpolation='nearest')
      _bare(axes[i, j + 1], titles[j] if i == 0 else None)
  # The uniform level: a red line on the bar, named in the bar's label (a text beside the
  # bar ran into the label on narrow figures).
  bar = fig.colorbar(im, ax=axes, shrink=0.9, label=f'{quantity}\n(red line: {uniform_label})')
  bar.ax.axhline(uniform, color='tab:red', lw=1.5)
  return fig


def cls_attention(images: np.ndarray, attn_last: np.ndarray, patches: slice):
  """Rows: probe images; columns: the image, then each head's cls -> patch attention,
  on one colour scale (attention probability; the uniform level 1/T marked)."""
  maps = np.asarray(attn_last)[:, :, 0, patches]
  t = attn_last.shape[-1]
  fig = attention_maps(images, maps, [f'head {j}' for j in range(maps.shape[1])],
                       'attention probability', 1.0 / t, f'uniform 1/{t}')
  fig.suptitle(f'last block: attention of cls to the patches (uniform over all {t} tokens '
               f'= 1/{t})', fontsize=9)
  return fig


def register_attention(images: np.ndarray, attn: list, lay):
  """Left: mass on the registers per block, from cls and from patches; right: each
  register's own attention over the patches in the last block (first image)."""
  r = lay.num_registers
  fig, axes = plt.subplots(1, r + 1, figsize=(4 + 1.8 * r, 2.8), squeeze=False,
                           gridspec_kw={'width_ratios': [2.2] + [1] * r}, layout='constrained')
  blocks = np.arange(1, len(attn) + 1)
  from_cls = [np.asarray(a)[:, :, 0, lay.registers].sum(-1).mean() for a in attn]
  from_patch = [np.asarray(a)[:, :, lay.patches, lay.registers].sum(-1).mean() for a in attn]
  ax = axes[0, 0]
  ax.plot(blocks, from_cls, 'o-', label='cls -> registers')
  ax.plot(blocks, from_patch, 's-', label='patches -> registers')
  ax.set_xlabel('block')
  ax.set_ylabel('attention mass')
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  _integer_ticks(ax.xaxis)
  last = np.asarray(attn[-1])[0].mean(0)   # (T, T), heads averaged
  t = last.shape[-1]
  vmax = max(float(last[lay.registers, lay.patches].max()), 1.05 / t)
  side = int(round(math.sqrt(lay.num_patches)))
  im = None
  for k in range(r):
    im = axes[0, k + 1].imshow(last[lay.num_special + k, lay.patches].reshape(side, side),
                               cmap='viridis', vmin=0, vmax=vmax, interpolation='nearest')
    _bare(axes[0, k + 1], f'register {k} -> patches')
  bar = fig.colorbar(im, ax=list(axes[0, 1:]), shrink=0.9,
                     label='attention probability (heads averaged)')
  bar.ax.axhline(1.0 / t, color='tab:red', lw=1.5)
  bar.ax.text(1.02, 1.0 / t, f' uniform 1/{t}', color='tab:red', fontsize=7, va='center',
              transform=bar.ax.get_yaxis_transform())
  return fig


def gates(gate_rows: list[dict]):
  """Heat maps, block x head: mean gate value and the share of nearly closed gates."""
  mean = np.array([g['head_mean'] for g in gate_rows])
  sparse = np.array([g['head_sparsity'] for g in gate_rows])
  fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(gate_rows) + 2),
                           layout='constrained')
  for ax, grid, title in ((axes[0], mean, 'mean gate value'), (axes[1], sparse, 'sparsity')):
    im = ax.imshow(grid, vmin=0, vmax=1, cmap='magma', aspect='auto', origin='lower',
                   extent=(-0.5, grid.shape[1] - 0.5, 0.5, grid.shape[0] + 0.5))
    ax.set_xlabel('head')
    ax.set_ylabel('block')
    ax.set_title(title, fontsize=9)
    _integer_ticks(ax.xaxis, ax.yaxis)
    fig.colorbar(im, ax=ax)
  return fig


def sinks(attn_rows: list[dict], act_rows: list[dict]):
  """Per block: attention mass on the most-attended token, on cls, on registers (only
  where the model has them: a quantity that is None is not drawn); the largest |x| of the
  residual stream; its ratio to the median |x| (one quantity per axis)."""
  blocks = np.arange(1, len(attn_rows) + 1)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout='constrained')
  lines = (('sink_share', 'most-attended token'), ('cls_share', 'cls'),
           ('register_share', 'registers'), ('row_peak', 'mean row peak'))
  for key, label in (l for l in lines if attn_rows[0].get(l[0]) is not None):
    axes[0].plot(blocks, [r[key] for r in attn_rows], 'o-', label=label)
  axes[0].set_ylim(0, 1)
  axes[0].set_xlabel('block')
  axes[0].set_ylabel('attention mass')
  axes[0].legend(fontsize=7)
  axes[0].set_title('attention received (mean over heads and queries)', fontsize=9)
  _scaled_plot(axes[1], blocks, [r['act_max_abs'] for r in act_rows], 'max |x|', 'o-')
  axes[1].set_title('largest activation of the residual stream', fontsize=9)
  _scaled_plot(axes[2], blocks, [r['act_max_over_median'] for r in act_rows],
               'max |x| / median |x|', 's-', color='tab:red')
  axes[2].set_title('largest activation over the median', fontsize=9)
  for ax in axes:
    ax.set_xlabel('block')
    ax.set_xticks(blocks)
  return fig


def outliers(rows: list[dict]):
  """Per block: max |x|, mean per-token kurtosis, top |x| over the median; one per axis."""
  blocks = np.arange(1, len(rows) + 1)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout='constrained')
  for ax, key, label in ((axes[0], 'max_abs', 'max |x|'),
                         (axes[1], 'kurtosis', 'kurtosis over channels (normal = 3)'),
                         (axes[2], 'top_over_median', 'top |x| / median |x|')):
    _scaled_plot(ax, blocks, [r[key] for r in rows], label, 'o-')
    ax.set_xlabel('block')
    ax.set_xticks(blocks)
  axes[1].axhline(3.0, color='gray', ls=':', lw=1)
  fig.suptitle('residual stream outliers (Bondarenko et al. 2023; Sun et al. 2024)', fontsize=10)
  return fig


def sink_rate_and_entropy(rows: list[dict], kinds: list[str], epsilon: float):
  """Left: per block, the share of heads with a sink of each kind; right: entropy per
  block and head, in nats, on a scale from 0 to log T (uniform)."""
  blocks = np.arange(1, len(rows) + 1)
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout='constrained')
  for kind in kinds:
    axes[0].plot(blocks, [r[f'sink_rate_{kind}'] for r in rows], 'o-', label=f'to {kind}')
  axes[0].set_ylim(-0.02, 1.02)
  axes[0].set_xlabel('block')
  axes[0].set_xticks(blocks)
  axes[0].set_ylabel(f'share of heads with a score > {epsilon}')
  axes[0].set_title('sink rate (Gu et al. 2025)', fontsize=9)
  axes[0].legend(fontsize=7)
  grid = np.array([r['entropy_heads'] for r in rows])
  uniform = rows[0]['entropy_uniform']
  im = axes[1].imshow(grid, vmin=0, vmax=uniform, cmap='magma', aspect='auto', origin='lower',
                      extent=(-0.5, grid.shape[1] - 0.5, 0.5, grid.shape[0] + 0.5))
  axes[1].set_xlabel('head')
  axes[1].set_ylabel('block')
  _integer_ticks(axes[1].xaxis, axes[1].yaxis)
  axes[1].set_title('attention entropy per head', fontsize=9)
  fig.colorbar(im, ax=axes[1], label=f'entropy, nats (uniform = log T = {uniform:.2f})')
  return fig


def defects(rows: list[dict]):
  """Per block: the leading singular value of the linearised update; |cos| of the
  high-norm and of the other patch tokens with its direction."""
  blocks = np.arange(1, len(rows) + 1)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout='constrained')
  _scaled_plot(axes[0], blocks, [r['sigma1'] for r in rows], 'leading singular value', 'o-')
  axes[0].set_title("linearised block update's gain", fontsize=9)
  for key, label in (('cos_high_norm', 'high-norm tokens'), ('cos_normal', 'other tokens')):
    vals = [np.nan if r[key] is None else r[key] for r in rows]
    axes[1].plot(blocks, vals, 'o-', label=label)
  axes[1].set_ylim(-0.02, 1.02)
  axes[1].set_ylabel('mean |cos| with the leading direction')
  axes[1].legend(fontsize=7)
  axes[1].set_title('alignment with the singular defect (Wang et al. 2025)', fontsize=9)
  for ax in axes:
    ax.set_xlabel('block')
    ax.set_xticks(blocks)
  return fig
