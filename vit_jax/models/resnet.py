"""A ConvNet teacher: pre-activation ResNet (v2) with GroupNorm and weight-standardised convs.

The DeiT recipe distils from a ConvNet because it brings the locality and
translation-equivariance priors the ViT lacks. GroupNorm + weight
standardisation (as in BiT) trains well at any batch size and needs no batch
statistics, so the teacher is a pure function of its parameters inside the
student's jitted step.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class StdConv(nn.Conv):
  """Conv whose kernel is standardised (zero mean, unit variance per output channel)."""

  def param(self, name, *args, **kwargs):
    p = super().param(name, *args, **kwargs)
    if name == 'kernel':
      mean = jnp.mean(p, axis=(0, 1, 2), keepdims=True)
      var = jnp.var(p, axis=(0, 1, 2), keepdims=True)
      p = (p - mean) / jnp.sqrt(var + 1e-10)
    return p


class Bottleneck(nn.Module):
  """Pre-activation bottleneck: GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1."""
  features: int
  strides: int
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, name: StdConv(f, (k, k), (s, s), use_bias=False, dtype=self.dtype,
                                         name=name)
    norm = lambda name: nn.GroupNorm(min(self.groups, x.shape[-1]), dtype=self.dtype, name=name)
    y = nn.relu(norm('gn1')(x))
    shortcut = x
    if x.shape[-1] != 4 * self.features or self.strides != 1:
      shortcut = conv(4 * self.features, 1, self.strides, 'proj')(y)
    y = conv(self.features, 1, 1, 'conv1')(y)
    y = conv(self.features, 3, self.strides, 'conv2')(nn.relu(norm('gn2')(y)))
    y = conv(4 * self.features, 1, 1, 'conv3')(nn.relu(norm('gn3')(y)))
    return shortcut + y


class ResNet(nn.Module):
  """ResNetV2; stage_sizes (3, 4, 6, 3) with width 64 is ResNet-50.

  `stem`: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'small' (one 3x3/1 conv,
  for 32x32 and smaller inputs). Returns (logits, out) like the ViT, with the
  final feature map as out['patch_tokens'] (B, H*W, C).
  """
  num_classes: int
  image_size: int = 224
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  groups: int = 32
  stem: str = 'imagenet'
  dtype: Any = jnp.float32
  distillation: bool = False  # a ConvNet has no distillation token

  @nn.compact
  def __call__(self, images, *, train: bool = False, capture: bool = False):
    del train, capture  # no dropout, no batch statistics, no attention to capture
    if self.stem not in ('imagenet', 'small'):
      raise ValueError(f"model.stem={self.stem!r} is not one of ('imagenet', 'small')")
    x = images.astype(self.dtype)
    if self.stem == 'imagenet':
      x = StdConv(self.width, (7, 7), (2, 2), use_bias=False, dtype=self.dtype, name='stem')(x)
      x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    else:
      x = StdConv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name='stem')(x)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = Bottleneck(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.groups,
                       self.dtype, name=f'stage{i + 1}_block{j + 1}')(x)
    x = nn.relu(nn.GroupNorm(min(self.groups, x.shape[-1]), dtype=self.dtype, name='norm')(x))
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    pooled = tokens.astype(jnp.float32).mean(1)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(pooled)
    return logits, {'patch_tokens': tokens, 'pre_logits': pooled}
