"""Attention overrides for transformers' FlaxGPT2: full, top-1 and top-1 + low-rank residual.

The override intercepts `FlaxGPT2Attention.__call__` (flax.linen.intercept_methods)
instead of forking the model: it calls the module's own `c_attn` and `c_proj`,
so the parameter tree is the pretrained one, untouched. Per layer, a rank r
selects what each query's head output is:

  r = FULL (-1)   sum_i p_i V_i, the exact softmax attention
  r = TOP1 (0)    V_{i*}, the value at the most-attended key (causal mask respected)
  r > 0           V_{i*} + P_r P_r^T eps, eps = sum_i p_i V_i - V_{i*}

Ranks and bases are arrays, so one jitted function serves every mode and every
d_r (the basis columns past r are masked, not sliced).
"""
import contextlib

import flax.linen as nn
from flax.linen import combine_masks
from flax.linen.attention import dot_product_attention_weights
import jax
import jax.numpy as jnp
import numpy as np
from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2Attention

FULL = -1
TOP1 = 0
MODES = ('full', 'top1', 'lowrank')


def ranks_for(n_layer: int, layers, mode: str, d_r: int = 0) -> np.ndarray:
  """Per-layer ranks: `mode` on `layers`, exact attention everywhere else."""
  if mode not in MODES:
    raise ValueError(f'mode={mode!r} is not one of {MODES}')
  ranks = np.full(n_layer, FULL, np.int32)
  ranks[list(layers)] = {'full': FULL, 'top1': TOP1, 'lowrank': d_r}[mode]
  return ranks


def top1_values(weights, value):
  """V at each query's argmax key. weights (B,H,Q,K), value (B,K,H,D) -> (B,Q,H,D)."""
  index = jnp.argmax(weights, axis=-1)                       # (B,H,Q)
  per_head = jnp.swapaxes(value, 1, 2)                       # (B,H,K,D)
  gathered = jnp.take_along_axis(per_head, index[..., None], axis=2)
  return jnp.swapaxes(gathered, 1, 2)


def mix_heads(weights, value, rank, basis):
  """Per-head outputs (B,Q,H,D) for one layer; rank is a traced int, basis (H,D,D)."""
  full = jnp.einsum('...hqk,...khd->...qhd', weights, value)
  star = top1_values(weights, value)
  keep = (jnp.arange(basis.shape[-1]) < rank).astype(basis.dtype)
  p = basis * keep                                           # columns past rank zeroed
  coeffs = jnp.einsum('bqhd,hdr->bqhr', full - star, p)
  lowrank = star + jnp.einsum('bqhr,hdr->bqhd', coeffs, p)
  return jnp.where(rank == FULL, full, lowrank)


def _weights(module, query, key, attention_mask, deterministic):
  """Softmax attention weights exactly as FlaxGPT2Attention builds them (no cache)."""
  batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
  causal = jnp.broadcast_to(module.causal_mask[:, :, :q_len, :k_len], (batch, 1, q_len, k_len))
  if attention_mask is not None:
    pad = jnp.broadcast_to(jnp.expand_dims(attention_mask, axis=(-3, -2)), causal.shape)
    mask = combine_masks(pad, causal)
  else:
    mask = causal
  bias = jax.lax.select(mask > 0, jnp.full(mask.shape, 0.0).astype(module.dtype),
                        jnp.full(mask.shape, jnp.finfo(module.dtype).min).astype(module.dtype))
  dropout_rng = None
  if not deterministic and module.config.attn_pdrop > 0.0:
    dropout_rng = module.make_rng('dropout')
  return dot_product_attention_weights(
      query, key, bias=bias, dropout_rng=dropout_rng, dropout_rate=module.config.attn_pdrop,
      deterministic=deterministic, dtype=module.dtype, precision=None)


def layer_index(module) -> int:
  """'transformer/h/<i>/attn' -> i."""
  return int(module.scope.path[-2])


def _attention(module, rank, basis, collect, hidden_states, key_value_states=None,
               attention_mask=None, deterministic=True, init_cache=False,
               output_attentions=False):
  if key_value_states is not None or init_cache or module.has_variable('cache', 'cached_key'):
    raise NotImplementedError('attention overrides cover full-sequence self-attention only')
  query, key, value = (module._split_heads(x)
                       for x in jnp.split(module.c_attn(hidden_states), 3, axis=2))
  weights = _weights(module, query, key, attention_mask, deterministic)
  heads = mix_heads(weights, value, rank, basis)
  if collect:  # uncentred second moment of eps per head, padded queries left out
    eps = jnp.einsum('...hqk,...khd->...qhd', weights, value) - top1_values(weights, value)
    if attention_mask is not None:
      eps = eps * attention_mask[:, :, None, None].astype(eps.dtype)
    module.sow('intermediates', 'residual_gram', jnp.einsum('bqhd,bqhe->hde', eps, eps))
  out = module.resid_dropout(module.c_proj(module._merge_heads(heads)),
                             deterministic=deterministic)
  return (out, weights) if output_attentions else (out,)


@contextlib.contextmanager
def crystallize(ranks, bases=None, layers=None, collect=False):
  """Within this context, FlaxGPT2 attention of `layers` (default: all) follows `ranks`.

  ranks: (n_layer,) ints, see the module docstring. bases: (n_layer, H, D, D),
  per (layer, head) orthonormal columns, needed for r > 0. collect: sow each
  overridden layer's residual Gram matrix (H, D, D) into 'intermediates'.
  """
  ranks = jnp.asarray(ranks)
  layers = set(range(ranks.shape[0]) if layers is None else layers)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != '__call__' or not isinstance(module, FlaxGPT2Attention)
        or module.is_cross_attention or layer_index(module) not in layers):
      return next_fun(*args, **kwargs)
    i = layer_index(module)
    d = module.head_dim
    basis = (jnp.broadcast_to(jnp.eye(d, dtype=module.dtype), (module.num_heads, d, d))
             if bases is None else jnp.asarray(bases[i], module.dtype))
    return _attention(module, ranks[i], basis, collect, *args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
