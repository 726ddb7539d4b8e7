"""Shared pieces of the reference tests: each compares the project's code with an
installed reference (timm, torch, torchvision, transformers' PyTorch GPT-2) on
identical inputs, weights and random draws."""
import numpy as np
import torch


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
