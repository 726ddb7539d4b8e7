"""Outlier metrics of the residual stream, per block.

Bondarenko et al. 2023 (Quantizable Transformers) measure outliers by the largest
|x| of a layer's output and by the kurtosis of its activations; Sun et al. 2024
(Massive Activations) list the few largest |x| with the token and channel they
sit in, and compare them with the median |x|.
"""
import numpy as np

from vit_jax.models import vit


def kurtosis(x: np.ndarray) -> float:
  """Pearson kurtosis (a normal gives 3, not 0) of each token's D channels, averaged over
  tokens and images.

  The axis is the hidden dimension, per token, as we read Bondarenko et al. 2023's
  'kurtosis of x' (an outlier channel makes one token's channel distribution heavy
  tailed); we could not check their code, so read it as our definition.
  """
  x = np.asarray(x, np.float64)
  c = x - x.mean(-1, keepdims=True)
  var = (c ** 2).mean(-1)
  k = (c ** 4).mean(-1) / np.maximum(var, 1e-30) ** 2
  return float(k.mean())


def top_activations(x: np.ndarray, lay: vit.TokenLayout, k: int) -> list[dict]:
  """The k largest |x| of a (B, T, D) residual stream, each with (image, token, token
  kind, channel), its value and its ratio to the median |x| of the whole stream."""
  x = np.asarray(x, np.float64)
  a = np.abs(x)
  median = float(np.median(a))
  flat = np.argsort(a, axis=None)[::-1][:k]
  out = []
  for f in flat:
    b, t, c = (int(i) for i in np.unravel_index(f, a.shape))
    out.append({'image': b, 'token': t, 'kind': lay.kind(t), 'channel': c,
                'value': float(x[b, t, c]), 'over_median': float(a[b, t, c] / median)})
  return out


def block_rows(blocks: list, lay: vit.TokenLayout, k: int) -> list[dict]:
  """Per block: max |x|, mean per-token kurtosis, and the top-k |x| (Sun et al.'s list)."""
  rows = []
  for x in blocks:
    top = top_activations(x, lay, k)
    rows.append({'max_abs': abs(top[0]['value']), 'kurtosis': kurtosis(x),
                 'top_over_median': top[0]['over_median'], 'top': top})
  return rows
