"""The numbers of the analysis, from one captured forward pass (numpy in, floats out).

Token order is the model's: [cls, dist?, registers..., patches].
"""
import numpy as np

from vit_jax.models import token_norms
from vit_jax.models import vit


def norm_stats(norms: np.ndarray, probe_cfg) -> dict:
  """token_norms.stats plus the largest norm and the largest / median ratio."""
  norms = np.asarray(norms, np.float64)
  return {**token_norms.stats(norms, probe_cfg), 'l2_norm_max': float(norms.max()),
          'max_over_median': float(norms.max() / np.median(norms))}


def layer_norm_stats(layer_norms: np.ndarray, probe_cfg) -> list[dict]:
  """One norm_stats per block; the outlier rule is applied within each layer."""
  return [norm_stats(n, probe_cfg) for n in layer_norms]


def kind_norms(blocks: list[np.ndarray], lay: vit.TokenLayout) -> list[dict]:
  """Per block, the L2 norms of the residual stream by kind of token, averaged over the
  images: cls, the registers (mean and largest; None without registers) and the patches'
  median and largest, so a register that takes over the high norms is seen beside them."""
  rows = []
  for x in blocks:
    n = np.linalg.norm(np.asarray(x, np.float64), axis=-1)      # (B, T)
    regs = n[:, lay.registers]
    patches = n[:, lay.patches]
    rows.append({'cls': float(n[:, 0].mean()),
                 'register_mean': float(regs.mean()) if regs.size else None,
                 'register_max': float(regs.max(-1).mean()) if regs.size else None,
                 'patch_median': float(np.median(patches, -1).mean()),
                 'patch_max': float(patches.max(-1).mean())})
  return rows


def flat_patch_outliers(layer_norms: np.ndarray, images: np.ndarray, probe_cfg) -> list[dict]:
  """Per block, where the high-norm patch tokens sit: 'outliers' is the share of them on
  flat patches (pixel standard deviation at or below its image's median over patches: the
  redundant background where Darcet et al. 2024 found the artifacts), 'base' the share of
  all patch tokens that are flat. outliers well above base: the high norms live in the
  background; near base: they do not prefer it. None where a block has no outlier.
  layer_norms: (L, B, N) patch-token norms; images: (B, H, W, C) on the patch grid."""
  layer_norms = np.asarray(layer_norms, np.float64)
  b, n = layer_norms.shape[1:]
  side = int(round(np.sqrt(n)))
  h, w = images.shape[1:3]
  if side * side != n or h % side or w % side:
    return []                                   # the images are not on the patch grid
  ph, pw = h // side, w // side
  x = np.asarray(images, np.float64).reshape(b, side, ph, side, pw, -1)
  spread = x.std(axis=(2, 4, 5)).reshape(b, n)
  flat = spread <= np.median(spread, axis=1, keepdims=True)
  rows = []
  for norms in layer_norms:
    out = token_norms.outlier_mask(norms, probe_cfg.outlier_rule, probe_cfg.outlier_factor,
                                   probe_cfg.outlier_threshold)
    rows.append({'outliers': float(flat[out].mean()) if out.any() else None,
                 'base': float(flat.mean())})
  return rows


def outlier_tokens(norms: np.ndarray, probe_cfg) -> list[tuple[int, int]]:
  """(image, patch) of every outlier token of a (B, N) norm array."""
  mask = token_norms.outlier_mask(np.asarray(norms, np.float64), probe_cfg.outlier_rule,
                                  probe_cfg.outlier_factor, probe_cfg.outlier_threshold)
  return [tuple(int(i) for i in ij) for ij in np.argwhere(mask)]


def is_sink(share, num_tokens: int, epsilon: float, factor: float):
  """A key is a sink only when its share (attention averaged over queries) exceeds both
  epsilon (Gu et al. 2025's 0.3) and factor times the uniform share 1/T."""
  return np.asarray(share) > max(epsilon, factor / num_tokens)


def attention_stats(attn: list[np.ndarray], lay: vit.TokenLayout, epsilon: float = 0.3,
                    factor: float = 5.0) -> list[dict]:
  """Per layer, from (B, H, T, T) attention probabilities.

  sink_share: the attention mass (averaged over heads and queries) that the
  single most-attended key of each image receives, averaged over images;
  sink_images: the share of images whose most-attended key is a sink by `is_sink`;
  sink_kind: which kind of token that key most often is among those images, when they
  are at least half of the images ('none' otherwise: a sink in a few images is not
  the layer's sink). cls_share /
  register_share: the mass on cls / on all registers (None for a model without
  registers: no mass, not zero mass). row_peak: the mean of
  each row's largest weight (1 = every query attends one key).
  """
  rows = []
  for a in attn:
    a = np.asarray(a, np.float64)
    received = a.mean(axis=(1, 2))                     # (B, T): mass each key receives
    sink = received.argmax(-1)
    real = is_sink(received.max(-1), a.shape[-1], epsilon, factor)
    kinds = [lay.kind(int(i)) for i, r in zip(sink, real) if r]
    if 2 * len(kinds) < len(sink):
      kinds = ['none']
    rows.append({
        'sink_share': float(received.max(-1).mean()),
        'sink_images': float(np.mean(real)),
        'sink_kind': max(sorted(set(kinds)), key=kinds.count),
        'sink_index': int(np.bincount(sink).argmax()),
        'cls_share': float(a[..., 0].mean()),
        'register_share': (float(a[..., lay.registers].sum(-1).mean())
                           if lay.num_registers else None),
        'row_peak': float(a.max(-1).mean()),
        'row_sum_max_error': float(np.abs(a.sum(-1) - 1).max()),
    })
  return rows


def gate_stats(gates: list[np.ndarray], sparse_below: float) -> list[dict]:
  """Per layer, from (B, T, H, D) sigmoid gate values: mean and sparsity per head.

  Sparsity is the share of gate values below `sparse_below` (channels the gate
  nearly closes); the gated-attention paper's G1 mean is about 0.116.
  """
  rows = []
  for g in gates:
    g = np.asarray(g, np.float64)
    rows.append({'mean': float(g.mean()), 'sparsity': float((g < sparse_below).mean()),
                 'head_mean': g.mean(axis=(0, 1, 3)).tolist(),
                 'head_sparsity': (g < sparse_below).mean(axis=(0, 1, 3)).tolist(),
                 'min': float(g.min()), 'max': float(g.max())})
  return rows


def activation_stats(blocks: list[np.ndarray]) -> list[dict]:
  """Per layer: the largest |activation| of the residual stream and its ratio to the median."""
  rows = []
  for x in blocks:
    x = np.abs(np.asarray(x, np.float64))
    rows.append({'act_max_abs': float(x.max()),
                 'act_max_over_median': float(x.max() / np.median(x))})
  return rows
