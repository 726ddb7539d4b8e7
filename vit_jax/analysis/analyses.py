"""The analyses `config.trainer=analyze` runs, in one table.

Each analysis reads the captured forward pass of the probe images (`Capture`) and gives
any of: rows per block (merged, with its prefix, into analysis.json's 'layers'),
summary entries (top-level keys of analysis.json) and plots (file name, figure). A new
analysis is its functions (e.g. in a module of its own) and one entry in ANALYSES.
"""
import dataclasses
from typing import Callable

import numpy as np

from vit_jax.analysis import plots
from vit_jax.analysis import stats
from vit_jax.models import token_norms
from vit_jax.models import vit


@dataclasses.dataclass
class Capture:
  """What one analysis run knows: the probe images and everything the model captured."""
  config: object
  images: np.ndarray              # (B, H, W, 3) uint8
  layout: vit.TokenLayout
  attn: list                      # per block: (B, heads, T, T)
  blocks: list                    # per block: the residual stream (B, T, D)
  gates: list                     # per gated block: gate values
  layer_norms: np.ndarray         # (L, B, N) patch-token norms after each block
  output_norms: np.ndarray        # (B, N) after the final LayerNorm
  per_epoch: dict                 # {epoch: (B, N)} norms saved during training
  per_epoch_layers: dict          # {epoch: (L, B, N)}


@dataclasses.dataclass(frozen=True)
class Analysis:
  block_rows: Callable | None = None   # Capture -> [dict per block]
  prefix: str = ''                     # of its keys in the merged 'layers' rows
  summary: Callable | None = None      # (Capture, {analysis: rows}) -> dict
  plots: Callable | None = None        # (Capture, {analysis: rows}) -> [(file, figure)]


def _norm_summary(cap: Capture, rows) -> dict:
  probe = cap.config.probe
  return {'output_norms': stats.norm_stats(cap.output_norms, probe),
          'output_outlier_tokens': stats.outlier_tokens(cap.output_norms, probe)[:50],
          'epochs': [{'epoch': e, **stats.norm_stats(cap.per_epoch[e], probe)}
                     for e in sorted(cap.per_epoch)]}


def _norm_plots(cap: Capture, rows) -> list:
  out = []
  if cap.per_epoch:
    chosen = {e: cap.per_epoch[e] for e in plots.pick_epochs(list(cap.per_epoch))}
    probe = cap.config.probe
    lines = {e: token_norms.outlier_limit(v, probe.outlier_rule, probe.outlier_factor,
                                          probe.outlier_threshold) for e, v in chosen.items()}
    out.append(('l2_norms_per_epoch.png', plots.norm_histograms(chosen, lines)))
  out.append(('l2_norms_per_layer.png',
              plots.layer_norms(cap.layer_norms, cap.per_epoch_layers or None)))
  return out


def _attention_plots(cap: Capture, rows) -> list:
  k = cap.config.analysis.num_images
  out = [('attention_cls.png',
          plots.cls_attention(cap.images[:k], cap.attn[-1][:k], cap.layout.patches))]
  if cap.layout.num_registers:
    out.append(('attention_registers.png',
                plots.register_attention(cap.images, cap.attn, cap.layout)))
  return out


def _gate_summary(cap: Capture, rows) -> dict:
  g = rows['gates']
  return {'gates': ({'mean': float(np.mean([r['mean'] for r in g])),
                     'sparsity': float(np.mean([r['sparsity'] for r in g])),
                     'sparse_below': cap.config.analysis.gate_sparse_below} if g else None)}


ANALYSES = {
    # Token norms per block and at the output, per epoch of training: high-norm tokens.
    'norms': Analysis(block_rows=lambda c: stats.layer_norm_stats(c.layer_norms, c.config.probe),
                      summary=_norm_summary, plots=_norm_plots),
    # Where attention goes: sinks, cls, registers; maps of the cls token's attention.
    'attention': Analysis(block_rows=lambda c: stats.attention_stats(c.attn, c.layout),
                          plots=_attention_plots),
    # The largest activations of the residual stream (with the attention rows: sinks.png).
    'activations': Analysis(
        block_rows=lambda c: stats.activation_stats(c.blocks),
        plots=lambda c, rows: [('sinks.png', plots.sinks(rows['attention'],
                                                         rows['activations']))]),
    # Gate values per block and head (G1 / G2 models only).
    'gates': Analysis(
        block_rows=lambda c: stats.gate_stats(c.gates, c.config.analysis.gate_sparse_below),
        prefix='gate_', summary=_gate_summary,
        plots=lambda c, rows: [('gates.png', plots.gates(rows['gates']))] if rows['gates'] else []),
}


def run_all(cap: Capture) -> tuple[dict, list]:
  """(summary entries with 'layers', [(file, figure)]) of every analysis in the table."""
  rows = {name: a.block_rows(cap) if a.block_rows else [] for name, a in ANALYSES.items()}
  layers = [{'block': i + 1} for i in range(len(cap.blocks))]
  for name, a in ANALYSES.items():
    for layer, row in zip(layers, rows[name]):
      layer.update({f'{a.prefix}{k}': v for k, v in row.items()})
  summary = {'layers': layers}
  figures = []
  for a in ANALYSES.values():
    if a.summary:
      summary.update(a.summary(cap, rows))
    if a.plots:
      figures += a.plots(cap, rows)
  return summary, figures
