"""One Vision Transformer whose fields express every variant of the seeds.

Token order: [cls, dist?, registers..., patches]. Position embeddings follow
`pos_embed`: 'patches' (DeiT-III, timm's no_embed_class: only patch tokens get
one) or 'all' (original DeiT: cls and dist tokens get one too). Registers
never get one and are dropped at the output.

`__call__` returns (logits, out). `out` always holds the cheap views
(pre_logits, the normed output patch tokens, per-head logits); with
`capture=True` it also holds the tokens entering the first block, per-block
tokens, attention probabilities, gate values and MLP hidden activations (fc1
after GELU), so analysis needs no second model.

Test-time registers (Jiang et al. 2025, analysis only, off by default):
`test_time_registers=n` adds n zero tokens after the trained registers (no
position embedding, dropped at the output); with `neuron_mask` ((depth, hidden)
booleans) each masked MLP neuron's activation is set to zero at every token and,
at the added tokens, to its largest value over the image's tokens.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import mixed
from vit_jax.models import svd_taps

GATES = ('none', 'g1', 'g2')
POS_EMBEDS = ('patches', 'all')
HEADS = ('linear', 'mlp')
ATTENTION_IMPLS = ('xla', 'cudnn')  # jax.nn.dot_product_attention's; cudnn needs a GPU
INITS = layers.INITS

_dense_init = layers.dense_init   # torch's trunc_normal_(std=0.02)


def _gelu(x):
  """Exact GELU written as torch computes it, x (1 + erf(x / sqrt 2)) / 2: XLA:CPU's erf is
  one rational polynomial, while flax's nn.gelu(approximate=False) goes through erfc
  (exponentials and branches), which made GELU ~15% of the CPU train step."""
  return x * (1 + jax.lax.erf(x * (2 ** -0.5)).astype(x.dtype)) * 0.5


class Attention(nn.Module):
  """Multi-head self-attention with an optional head-specific sigmoid gate.

  G1 gates the SDPA output, G2 gates the values; both compute sigmoid(X W)
  from the block's pre-normed input X, with no bias, per head and channel.
  """
  num_heads: int
  qkv_bias: bool = True
  gate: str = 'none'
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = 'xla'
  qkv_init: Any = _dense_init

  @nn.compact
  def __call__(self, x, deterministic: bool, capture: bool):
    b, t, width = x.shape
    h = self.num_heads
    d = width // h
    q, k, v = (y.reshape(b, t, h, d) for y in mixed.SplitDense(
        3 * width, use_bias=self.qkv_bias, kernel_init=self.qkv_init, dtype=self.dtype,
        name='qkv')(x))
    aux = {}
    if self.gate != 'none':
      g = mixed.Dense(width, use_bias=False, kernel_init=_dense_init, dtype=self.dtype,
                      name='gate')(x)
      g = nn.sigmoid(g.astype(jnp.float32)).reshape(b, t, h, d)
      if capture:
        aux['gate'] = g
      g = g.astype(v.dtype)
      if self.gate == 'g2':
        v = v * g
    need_probs = capture or (self.attention_dropout_rate > 0 and not deterministic)
    if need_probs or self.attention_impl == 'xla':
      # Written out rather than jax.nn.dot_product_attention(implementation='xla'), which
      # computes the same but ~40% slower on XLA:CPU at small shapes (its layout copies).
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) / d**0.5
      probs = jax.nn.softmax(logits, axis=-1)
      if capture:
        aux['attn'] = probs
      probs = nn.Dropout(self.attention_dropout_rate)(probs, deterministic)
      y = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)
    else:
      y = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
    if self.gate == 'g1':
      y = y * g
    return mixed.Dense(width, kernel_init=_dense_init, dtype=self.dtype,
                       name='proj')(y.reshape(b, t, width)), aux


class Mlp(nn.Module):
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool, neuron_mask=None, moved_to: slice = slice(0)):
    width = x.shape[-1]
    dense = lambda n, name: mixed.Dense(n, kernel_init=_dense_init, dtype=self.dtype, name=name)
    h = _gelu(dense(self.hidden, 'fc1')(x))
    if neuron_mask is not None:   # Jiang et al. 2025: move these neurons into the added tokens
      peak = h.max(axis=1, keepdims=True)
      h = jnp.where(neuron_mask, 0, h)
      h = h.at[:, moved_to].set(jnp.where(neuron_mask, peak, h[:, moved_to]))
    x = nn.Dropout(self.dropout_rate)(h, deterministic)
    return dense(width, 'fc2')(x), h


class Block(nn.Module):
  """Pre-norm block: x + drop_path(ls * attn(norm(x))), then the same for the MLP."""
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  gate: str
  layerscale_init: float
  drop_path_rate: float
  dropout_rate: float
  attention_dropout_rate: float
  layer_norm_eps: float
  dtype: Any
  attention_impl: str = 'xla'
  qkv_init: Any = _dense_init

  def _branch(self, y, name, deterministic):
    y = nn.Dropout(self.dropout_rate)(y, deterministic)
    if self.layerscale_init:
      y = layers.LayerScale(self.layerscale_init, name=f'ls_{name}')(y)
    return layers.DropPath(self.drop_path_rate)(y, deterministic)

  @nn.compact
  def __call__(self, x, deterministic: bool, capture: bool, neuron_mask=None,
               moved_to: slice = slice(0)):
    norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
    y, aux = Attention(self.num_heads, self.qkv_bias, self.gate,
                       self.attention_dropout_rate, self.dtype, self.attention_impl,
                       self.qkv_init, name='attn')(
                           norm('norm1')(x), deterministic, capture)
    x = x + self._branch(y, 'attn', deterministic)
    y, hidden = Mlp(int(x.shape[-1] * self.mlp_ratio), self.dropout_rate, self.dtype,
                    name='mlp')(norm('norm2')(x), deterministic, neuron_mask, moved_to)
    if capture:
      aux['mlp'] = hidden
    x = x + self._branch(y, 'mlp', deterministic)
    return x, aux


class Head(nn.Module):
  """'linear', or seed 000's MLP head: Dense(width) -> GELU -> LayerNorm -> Dropout -> Dense."""
  num_classes: int
  kind: str
  hidden: int
  dropout_rate: float
  layer_norm_eps: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = x.astype(jnp.float32)
    if self.kind == 'mlp':
      x = _gelu(nn.Dense(self.hidden, kernel_init=_dense_init, name='hidden')(x))
      x = nn.LayerNorm(self.layer_norm_eps, name='norm')(x)
      x = nn.Dropout(self.dropout_rate)(x, deterministic)
    return nn.Dense(self.num_classes, kernel_init=_dense_init, name='out')(x)


# Where each kind of token sits (the type token_layout gives).
TokenLayout = layers.TokenLayout


def special_tokens(distillation: bool) -> int:
  """The tokens before the registers: cls, and the dist token of a distilled model."""
  return 2 if distillation else 1


def token_layout(model, test_time_registers: int = 0) -> TokenLayout:
  """The layout of a ViT, from the module or from config.model (same field names);
  test-time registers count as registers (they sit right after the trained ones)."""
  return TokenLayout(special_tokens(model.distillation),
                     model.num_registers + test_time_registers,
                     (model.image_size // model.patch_size) ** 2)


class ViT(nn.Module):
  num_classes: int                   # 0: no head; the logits are the normed cls features
  image_size: int = 224
  patch_size: int = 16
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layerscale_init: float = 1e-4      # 0 switches LayerScale off
  drop_path_rate: float = 0.0        # at the last block; linear in depth from 0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  num_registers: int = 0
  pos_embed: str = 'patches'
  distillation: bool = False
  gate: str = 'none'
  svd_tap_layers: Sequence[int] = ()  # 1-indexed blocks whose output is tapped
  svd_rank: int = 32
  head: str = 'linear'
  head_dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  attention_impl: str = 'xla'
  init_scheme: str = 'deit'          # see layers.initializers()
  dtype: Any = jnp.float32

  def _check(self):
    for name, value, allowed in (('gate', self.gate, GATES),
                                 ('pos_embed', self.pos_embed, POS_EMBEDS),
                                 ('head', self.head, HEADS),
                                 ('init_scheme', self.init_scheme, INITS),
                                 ('attention_impl', self.attention_impl, ATTENTION_IMPLS)):
      if value not in allowed:
        raise ValueError(f'model.{name}={value!r} is not one of {allowed}')
    if self.image_size % self.patch_size:
      raise ValueError(f'model.image_size={self.image_size} is not a multiple of '
                       f'model.patch_size={self.patch_size}')
    if self.width % self.num_heads:
      raise ValueError(f'model.width={self.width} is not divisible by '
                       f'model.num_heads={self.num_heads}')
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f'model.drop_path_rate={self.drop_path_rate} is outside [0, 1)')
    bad = [l for l in self.svd_tap_layers if not 1 <= l <= self.depth]
    if bad:
      raise ValueError(f'model.svd_tap_layers has {bad}; layers are 1..{self.depth}')

  @nn.compact
  def __call__(self, images, *, train: bool = False, capture: bool = False,
               test_time_registers: int = 0, neuron_mask=None):
    self._check()
    deterministic = not train
    b = images.shape[0]
    inits = layers.initializers(self.init_scheme, images.shape[-1] * self.patch_size**2)
    token = lambda name, n, kind='token': self.param(name, inits[kind], (1, n, self.width))
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding='VALID', kernel_init=inits['conv'], bias_init=inits['conv_bias'],
                dtype=self.dtype, name='patch_embed')(images.astype(self.dtype))
    x = x.reshape(b, -1, self.width)
    n_patches = x.shape[1]
    lay = token_layout(self, test_time_registers)
    n_special = lay.num_special

    special = [token('cls', 1)]
    if self.distillation:
      special.append(token('dist', 1))
    special = [jnp.broadcast_to(t, (b, 1, self.width)).astype(x.dtype) for t in special]
    if self.pos_embed == 'patches':
      x = x + token('pos_embedding', n_patches).astype(x.dtype)
      x = jnp.concatenate(special + [x], axis=1)
    else:
      x = jnp.concatenate(special + [x], axis=1)
      x = x + token('pos_embedding', n_special + n_patches).astype(x.dtype)
    if self.num_registers:
      reg = jnp.broadcast_to(token('registers', self.num_registers, 'register'),
                             (b, self.num_registers, self.width)).astype(x.dtype)
      x = jnp.concatenate([x[:, :n_special], reg, x[:, n_special:]], axis=1)
    if test_time_registers:
      extra = jnp.zeros((b, test_time_registers, self.width), x.dtype)
      at = n_special + self.num_registers
      x = jnp.concatenate([x[:, :at], extra, x[:, at:]], axis=1)
    if neuron_mask is not None and not test_time_registers:
      raise ValueError('neuron_mask moves neurons into test-time registers; '
                       'pass test_time_registers >= 1 with it')
    moved_to = slice(n_special + self.num_registers, lay.patches.start)
    x = nn.Dropout(self.dropout_rate)(x, deterministic)
    first_patch = lay.patches.start

    out = {'embed': x, 'blocks': [], 'attn': [], 'gates': [], 'mlp': []} if capture else {}
    svd_feats = []
    for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
      x, aux = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.gate,
                     self.layerscale_init, rate, self.dropout_rate,
                     self.attention_dropout_rate, self.layer_norm_eps, self.dtype,
                     self.attention_impl, inits['qkv'],
                     name=f'block_{i}')(
                         x, deterministic, capture,
                         None if neuron_mask is None else neuron_mask[i], moved_to)
      if capture:
        out['blocks'].append(x)
        out['mlp'].append(aux['mlp'])
        out['attn'].append(aux['attn'])
        if 'gate' in aux:
          out['gates'].append(aux['gate'])
      if i + 1 in self.svd_tap_layers:
        proj = nn.Dense(self.svd_rank, use_bias=False, kernel_init=_dense_init,
                        name=f'svd_proj_{len(svd_feats)}')(x[:, first_patch:].astype(jnp.float32))
        svd_feats.append(svd_taps.tap_features(proj))

    x = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name='norm')(x)
    out['patch_tokens'] = x[:, first_patch:]
    head = lambda name: Head(self.num_classes, self.head, self.width, self.head_dropout_rate,
                             self.layer_norm_eps, name=name)
    cls = x[:, 0].astype(jnp.float32)
    out['pre_logits'] = cls
    if self.num_classes == 0:   # headless (timm's num_classes=0, e.g. DINOv2): the features
      if self.distillation:     # timm's distilled forward averages its two (identity) heads
        return (cls + x[:, 1].astype(jnp.float32)) / 2, out
      return cls, out
    logits = head('head')(jnp.concatenate([cls] + svd_feats, -1), deterministic)
    if self.distillation:
      out['cls_logits'] = logits
      out['dist_logits'] = head('head_dist')(
          jnp.concatenate([x[:, 1].astype(jnp.float32)] + svd_feats, -1), deterministic)
      logits = (out['cls_logits'] + out['dist_logits']) / 2
    return logits, out
