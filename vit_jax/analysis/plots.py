"""matplotlib figures of the analysis; each function returns a Figure, `save` writes a PNG."""
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90, bbox_inches='tight')
  plt.close(fig)
  os.replace(tmp, path)
  return path


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
    im = axes[0, 1].imshow(grid, aspect='auto', origin='lower', cmap='viridis',
                           extent=(epochs[0] - 0.5, epochs[-1] + 0.5, 0.5, n_layers + 0.5))
    axes[0, 1].set_xlabel('epoch')
    axes[0, 1].set_ylabel('block')
    axes[0, 1].set_title('mean patch-token norm per block', fontsize=9)
    _integer_ticks(axes[0, 1].yaxis)
    fig.colorbar(im, ax=axes[0, 1])
  return fig


def _overlay(ax, image, heat, title=None):
  ax.imshow(image, interpolation='nearest')
  side = int(round(math.sqrt(heat.size)))
  ax.imshow(heat.reshape(side, side), cmap='inferno', alpha=0.6, interpolation='nearest',
            extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)


def cls_attention(images: np.ndarray, attn_last: np.ndarray, patches: slice):
  """Rows: probe images; columns: the image, then each head's cls -> patch attention."""
  b, h = attn_last.shape[:2]
  fig, axes = plt.subplots(b, h + 1, figsize=(1.6 * (h + 1), 1.6 * b), squeeze=False,
                           layout='constrained')
  for i in range(b):
    axes[i, 0].imshow(images[i], interpolation='nearest')
    axes[i, 0].set_xticks([])
    axes[i, 0].set_yticks([])
    for j in range(h):
      _overlay(axes[i, j + 1], images[i], attn_last[i, j, 0, patches],
               f'head {j}' if i == 0 else None)
  fig.suptitle('last block: attention of cls to the patches', fontsize=10)
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
  for k in range(r):
    _overlay(axes[0, k + 1], images[0], last[lay.num_special + k, lay.patches], f'register {k}')
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
  """Per block: attention mass on the most-attended token, on cls, on registers; largest activation."""
  blocks = np.arange(1, len(attn_rows) + 1)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout='constrained')
  for key, label in (('sink_share', 'most-attended token'), ('cls_share', 'cls'),
                     ('register_share', 'registers'), ('row_peak', 'mean row peak')):
    axes[0].plot(blocks, [r[key] for r in attn_rows], 'o-', label=label)
  axes[0].set_ylim(0, 1)
  axes[0].set_xlabel('block')
  axes[0].set_ylabel('attention mass')
  axes[0].legend(fontsize=7)
  axes[1].semilogy(blocks, [r['act_max_abs'] for r in act_rows], 'o-', label='max |x|')
  axes[1].semilogy(blocks, [r['act_max_over_median'] for r in act_rows], 's-', label='max / median |x|')
  axes[1].set_xlabel('block')
  axes[1].legend(fontsize=7)
  axes[1].set_title('largest activation of the residual stream', fontsize=9)
  _integer_ticks(axes[0].xaxis, axes[1].xaxis)
  return fig
