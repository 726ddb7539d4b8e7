"""The analyses `config.trainer=analyze` runs, in one table.

Each analysis reads the captured forward pass of the probe images (`Capture`) and gives
any of: rows per block (merged, with its prefix, into analysis.json's 'layers'),
summary entries (top-level keys of analysis.json) and plots (file name, figure). A new
analysis is its functions (e.g. in a module of its own) and one entry in ANALYSES.
"""
import dataclasses
from typing import Callable

import numpy as np

from vit_jax.analysis import attention
from vit_jax.analysis import defects
from vit_jax.analysis import outliers
from vit_jax.analysis import plots
from vit_jax.analysis import registers
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
  embed: np.ndarray | None = None  # (B, T, D): the tokens entering the first block
  mlp: list | None = None          # per block: (B, T, hidden) fc1 activations after GELU
  params: dict | None = None       # the model's parameters (singular defects)
  # (images, test_time_registers, neuron_mask) -> {'logits', 'attn', 'output_norms',
  # 'layer_norms'}: another forward pass of the same model (test-time registers)
  apply: Callable | None = None
  labels: np.ndarray | None = None  # (B,) classes of the images, where known
  cache: dict = dataclasses.field(default_factory=dict)


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


def _sink_rows(cap: Capture) -> list:
  eps = cap.config.analysis.sink_epsilon
  return [{**s, **e} for s, e in zip(attention.sink_rows(cap.attn, cap.layout, eps),
                                     attention.entropy_rows(cap.attn))]


def _sink_kinds(lay: vit.TokenLayout) -> list:
  return [k for k, n in (('cls', 1), ('dist', lay.num_special - 1),
                         ('register', lay.num_registers), ('patch', 1)) if n]


def _sink_plots(cap: Capture, rows) -> list:
  return [('sink_rate_entropy.png', plots.sink_rate_and_entropy(
      rows['sinks'], _sink_kinds(cap.layout), cap.config.analysis.sink_epsilon))]


def _rollout_plots(cap: Capture, rows) -> list:
  k = cap.config.analysis.num_images
  _, maps = attention.rollout_summary(cap.attn, cap.layout)
  fig = plots.attention_maps(cap.images[:k], maps[:k, None], ['rollout of cls'],
                             "share of cls's rollout over the patches", 1.0 / maps.shape[-1],
                             f'uniform 1/{maps.shape[-1]}')
  return [('attention_rollout.png', fig)]


def _defect_rows(cap: Capture) -> list:
  if cap.params is None or cap.embed is None:
    return []
  return defects.block_rows(cap.params, cap.config.model, cap.embed, cap.blocks, cap.attn,
                            cap.layout, cap.config.probe, cap.config.analysis.defect_tokens)


def test_time_registers(cap: Capture) -> dict | None:
  """The register-neuron finder and the pass with one test-time register (cached);
  None when it cannot run, with the reason under 'skipped'."""
  if 'ttr' in cap.cache:
    return cap.cache['ttr']
  a = cap.config.analysis
  out = None
  if not a.register_neurons:
    out = {'skipped': 'analysis.register_neurons=0'}
  elif cap.apply is None or cap.mlp is None:
    out = {'skipped': 'no model pass available'}
  else:
    mask = registers.outlier_token_mask(cap.output_norms, cap.layout, cap.config.probe)
    if not mask.any():
      out = {'skipped': 'no outlier (high-norm) patch token under the outlier rule'}
    else:
      scores = registers.neuron_scores(cap.mlp, mask)
      neurons = registers.find_neurons(scores, a.register_neurons, a.register_neuron_layers)
      if not neurons:
        out = {'skipped': 'no neuron is more active on the outlier tokens than elsewhere'}
      else:
        before = cap.apply(cap.images, 0, None)
        after = cap.apply(cap.images, 1, registers.neuron_mask(neurons, *scores.shape))
        out = {'neurons': [{'block': b + 1, 'neuron': n, 'score': float(scores[b, n])}
                           for b, n in neurons],
               **registers.compare(before, after, cap.labels),
               '_maps': (before['attn'][-1], after['attn'][-1])}
  cap.cache['ttr'] = out
  return out


def _ttr_summary(cap: Capture, rows) -> dict:
  r = test_time_registers(cap)
  return {'test_time_registers': {k: v for k, v in r.items() if not k.startswith('_')}}


def _ttr_plots(cap: Capture, rows) -> list:
  r = test_time_registers(cap)
  if '_maps' not in r:
    return []
  k = cap.config.analysis.num_images
  before, after = (np.asarray(m)[:k].mean(1) for m in r['_maps'])   # heads averaged
  lay_after = vit.token_layout(cap.config.model, test_time_registers=1)
  maps = np.stack([before[:, 0, cap.layout.patches], after[:, 0, lay_after.patches]], 1)
  fig = plots.attention_maps(cap.images[:k], maps, ['cls, plain', 'cls, test-time register'],
                             'attention probability (heads averaged)', 1.0 / before.shape[-1],
                             f'uniform 1/{before.shape[-1]} (before)')
  fig.suptitle('last block, before and after moving the register neurons', fontsize=9)
  return [('test_time_registers.png', fig)]


def _gate_summary(cap: Capture, rows) -> dict:
  g = rows['gates']
  return {'gates': ({'mean': float(np.mean([r['mean'] for r in g])),
                     'sparsity': float(np.mean([r['sparsity'] for r in g])),
                     'sparse_below': cap.config.analysis.gate_sparse_below} if g else None)}


ANALYSES = {
    # Token norms per block and at the output, per epoch of training: high-norm tokens.
    'norms': Analysis(block_rows=lambda c: stats.layer_norm_stats(c.layer_norms, c.config.probe),
                      summary=_norm_summary, plots=_norm_plots),
    # Whether the high-norm patch tokens sit on flat (background) patches, per block.
    'flat_patches': Analysis(
        block_rows=lambda c: stats.flat_patch_outliers(c.layer_norms, c.images, c.config.probe),
        prefix='flat_'),
    # The residual stream's norms by kind of token (cls, registers, patches) per block.
    'kind_norms': Analysis(block_rows=lambda c: stats.kind_norms(c.blocks, c.layout),
                           prefix='norm_'),
    # Where attention goes: sinks, cls, registers; maps of the cls token's attention.
    'attention': Analysis(
        block_rows=lambda c: stats.attention_stats(c.attn, c.layout,
                                                   c.config.analysis.sink_epsilon,
                                                   c.config.analysis.sink_factor),
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
    # Bondarenko et al. 2023's max |x| and kurtosis; Sun et al. 2024's top-k |x|.
    'outliers': Analysis(
        block_rows=lambda c: outliers.block_rows(c.blocks, c.layout, c.config.analysis.top_k),
        prefix='outlier_',
        plots=lambda c, rows: [('outliers.png', plots.outliers(rows['outliers']))]),
    # Gu et al. 2025's sink rate per kind of token; attention entropy per head.
    'sinks': Analysis(
        block_rows=_sink_rows,
        summary=lambda c, rows: {'sink_rate': attention.sink_rate(
            c.attn, c.layout, c.config.analysis.sink_epsilon)},
        plots=_sink_plots),
    # Abnar & Zuidema 2020's attention rollout of cls; shares per kind of token.
    'rollout': Analysis(
        summary=lambda c, rows: {'rollout': attention.rollout_summary(c.attn, c.layout)[0]},
        plots=_rollout_plots),
    # Wang et al. 2025's singular defects: each block's leading update direction.
    'defects': Analysis(
        block_rows=_defect_rows, prefix='defect_',
        plots=lambda c, rows: [('singular_defects.png', plots.defects(rows['defects']))]
        if rows['defects'] else []),
    # Jiang et al. 2025: register neurons moved into a test-time register.
    'test_time_registers': Analysis(summary=_ttr_summary, plots=_ttr_plots),
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
