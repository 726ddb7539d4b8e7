"""Shared pieces of the reference tests: each compares the project's code with an
installed reference (timm, torch, torchvision, transformers' PyTorch GPT-2) on
identical inputs, weights and random draws."""
import numpy as np
import torch
from torch import nn


def randomize_(module: torch.nn.Module, seed: int, qkv_scale: float = 2.5) -> None:
  """Weights far from their init, so that every parameter matters and attention is peaked.

  With small random weights the attention is nearly uniform, and a swap of q and
  k moves the logits by only ~1e-5: such a comparison could not fail.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      r = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if p.ndim >= 2 and not name.endswith(('token', 'pos_embed')):
        fan_in = p[0].numel()
        scale = qkv_scale if ('qkv' in name or 'in_proj' in name) else 1.0
        p.copy_(r * scale / fan_in ** 0.5)
      elif 'norm' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * r)
      elif name.endswith('gamma'):
        p.copy_(0.5 + 0.2 * r)
      else:
        p.copy_(0.3 * r)


def mean_peak(attn) -> float:
  """Mean over rows of the largest attention probability (uniform over T keys: 1/T)."""
  return float(np.mean([np.asarray(a).max(-1).mean() for a in attn]))


def images(n=3, size=32, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def gram_eigh_svd(h):
  """Singular values (descending) and Vh of h (B, N, k) from eigh of h^T h; each row of Vh
  is signed so its diagonal entry is >= 0 (the project's convention: eigh's signs are
  arbitrary, and the features include Vh's diagonal)."""
  evals, evecs = torch.linalg.eigh(h.transpose(1, 2) @ h)
  s = evals.flip(-1).clamp(min=0).sqrt()
  vh = evecs.flip(-1).transpose(1, 2)
  sign = torch.where(torch.diagonal(vh, dim1=-2, dim2=-1) < 0, -1.0, 1.0)
  return s, vh * sign[..., :, None]


def svd_features(s, vh):
  """Seed 000's per-tap summary: S / sum S, diag Vh, off-diagonal mass, spectral entropy."""
  s = s.clamp(min=1e-6)
  s_norm = s / (s.sum(-1, keepdim=True) + 1e-8)
  diag = torch.diagonal(vh, dim1=-2, dim2=-1)
  off = (vh.pow(2).sum((-2, -1)) - diag.pow(2).sum(-1)).unsqueeze(-1).clamp(min=0)
  ent = -(s_norm * torch.log(s_norm.clamp(min=1e-8))).sum(-1, keepdim=True)
  out = torch.cat([s_norm, diag, off, ent], -1)
  return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


class Seed000(nn.Module):
  """Seed 000's DeiT-Small (+ SVD taps), written here from its description: conv patch
  embedding, cls + position embeddings, torch's pre-norm TransformerEncoderLayer (GELU,
  eps 1e-5), final LayerNorm, MLP head on [cls, tap features]. It also builds the
  never-called patch_norm, as the seed does."""

  def __init__(self, num_classes, image_size, patch, width, depth, heads, mlp_ratio,
               taps=(), rank=4):
    super().__init__()
    self.taps, n = taps, (image_size // patch) ** 2
    self.patch_embed = nn.Sequential(nn.Conv2d(3, width, patch, stride=patch), nn.Flatten(2))
    self.patch_norm = nn.LayerNorm(width)
    self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
    self.layers = nn.ModuleList([
        nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout=0.1,
                                   activation='gelu', batch_first=True, norm_first=True)
        for _ in range(depth)])
    self.norm = nn.LayerNorm(width)
    self.svd_projs = nn.ModuleList([nn.Linear(width, rank, bias=False) for _ in taps])
    self.head = nn.Sequential(nn.Linear(width + len(taps) * (2 * rank + 2), width), nn.GELU(),
                              nn.LayerNorm(width), nn.Dropout(0.1), nn.Linear(width, num_classes))

  def forward(self, x):
    patches = self.patch_embed(x).transpose(1, 2)
    tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], 1) + self.pos_embed
    feats = []
    for i, layer in enumerate(self.layers):
      tokens = layer(tokens)
      if i + 1 in self.taps:
        h = self.svd_projs[len(feats)](tokens[:, 1:])
        with torch.no_grad():
          feats.append(svd_features(*gram_eigh_svd(h.float())))
    return self.head(torch.cat([self.norm(tokens)[:, 0]] + feats, -1))
