"""Where attention goes: sink rate, per-head entropy and attention rollout.

Sink rate, after Gu et al. 2025 ("When Attention Sink Emerges in Language Models"):
for one head of one layer, a key's score is its attention averaged over the queries;
the head has a sink when some key's score exceeds epsilon (0.3 in the paper). The
rate is the share of (layer, head) pairs that have one. Gu et al. look at the first
token of a causal LM; a ViT has no first token, so the rate is given per kind of
token (cls, dist, any register, any patch), computed per image and averaged over
images (a patch sink sits at a different patch in each image).

Rollout, after Abnar & Zuidema 2020: per layer 0.5 * (heads' mean A) + 0.5 * I, rows
renormalised, multiplied from the first layer to the last; row 0 (cls) says how much
of each input token reaches cls. Registers and cls are tokens of the product like any
other; the map shows the patches' part renormalised to sum 1, and the shares that
went to cls / dist / registers / patches are reported beside it.
"""
import numpy as np

from vit_jax.models import vit

KINDS = ('cls', 'dist', 'register', 'patch')


def _kind_slices(lay: vit.TokenLayout) -> dict:
  return {'cls': slice(0, 1), 'dist': slice(1, lay.num_special), 'register': lay.registers,
          'patch': lay.patches}


def key_scores(a: np.ndarray) -> np.ndarray:
  """(B, H, T, T) attention -> (B, H, T): each key's attention averaged over queries."""
  return np.asarray(a, np.float64).mean(axis=2)


def sink_rate(attn: list, lay: vit.TokenLayout, epsilon: float) -> dict:
  """{kind: share of (layer, head) pairs, averaged over images, whose score to some token
  of that kind exceeds epsilon}, plus 'any' (to any token)."""
  slices = _kind_slices(lay)
  hits = {k: [] for k in KINDS + ('any',)}
  for a in attn:
    s = key_scores(a)                                          # (B, H, T)
    for kind, sl in slices.items():
      part = s[..., sl]
      hits[kind].append(part.max(-1) > epsilon if part.shape[-1] else np.zeros(s.shape[:2], bool))
    hits['any'].append(s.max(-1) > epsilon)
  # (L, B, H) -> share over layer and head, then the mean over images
  return {k: float(np.stack(v).mean(axis=(0, 2)).mean()) for k, v in hits.items()
          if k != 'dist' or lay.num_special > 1}


def sink_rows(attn: list, lay: vit.TokenLayout, epsilon: float) -> list[dict]:
  """Per layer: per kind, the share of heads (mean over images) with a score above epsilon."""
  rows = []
  for a in attn:
    rows.append({f'sink_rate_{k}': v for k, v in sink_rate([a], lay, epsilon).items()})
  return rows


def head_entropy(a: np.ndarray) -> np.ndarray:
  """(B, H, T, T) -> (H,): entropy in nats of each query's attention row, averaged over
  queries and images. The uniform row has log T."""
  a = np.asarray(a, np.float64)
  ent = -(a * np.log(np.where(a > 0, a, 1.0))).sum(-1)         # 0 log 0 = 0
  return ent.mean(axis=(0, 2))


def entropy_rows(attn: list) -> list[dict]:
  rows = []
  for a in attn:
    h = head_entropy(a)
    rows.append({'entropy_mean': float(h.mean()), 'entropy_min': float(h.min()),
                 'entropy_heads': h.tolist(), 'entropy_uniform': float(np.log(a.shape[-1]))})
  return rows


def rollout(attn: list) -> np.ndarray:
  """(B, T, T) attention rollout of layers attn[0..L-1] (each (B, H, T, T))."""
  out = None
  for a in attn:
    a = np.asarray(a, np.float64).mean(1)
    a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
    a = a / a.sum(-1, keepdims=True)
    out = a if out is None else a @ out
  return out


def rollout_summary(attn: list, lay: vit.TokenLayout) -> tuple[dict, np.ndarray]:
  """({share of cls's rollout that comes from each kind, mean over images}, (B, N) maps:
  the patch part of cls's rollout row, renormalised to sum 1 per image)."""
  r = rollout(attn)[:, 0]                                       # (B, T): what reaches cls
  shares = {k: float(r[:, sl].sum(-1).mean()) for k, sl in _kind_slices(lay).items()
            if k != 'dist' or lay.num_special > 1}
  maps = r[:, lay.patches]
  maps = maps / maps.sum(-1, keepdims=True)
  n = maps.shape[-1]
  shares['map_max_over_uniform'] = float((maps.max(-1) * n).mean())
  return shares, maps
