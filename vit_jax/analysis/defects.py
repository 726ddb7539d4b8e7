"""Singular defects (Wang et al. 2025): the leading singular direction of each block's
linearised residual update, and how closely the high-norm tokens align with it.

Linearisation (our choice, stated): for token i the block's update is
f(x_i) = block(x)_i - x_i. We hold the attention probabilities (and the G1/G2 gate
values) fixed at the captured ones and let only token i's own input move, so
  f(z) = ls1 * proj(O_i + A_ii (v(z) - v(x_i)))  +  ls2 * mlp(LN2(z + that))
with v(z) token i's value from LN1(z) and O_i its captured attention output: the
exact block update at z = x_i, differentiated there (jax.jacfwd, LayerNorm and GELU
included). The Jacobians of up to `defect_tokens` tokens (evenly spread over the
probe images' tokens) are averaged; the leading left singular vector of the mean is
the direction the block writes into most, its singular value the gain.
Alignment: |cos| between that direction and the block's output hidden state of the
high-norm patch tokens (the outlier rule on that block's norms), against the mean
|cos| of the other patch tokens.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import token_norms
from vit_jax.models import vit


def _layer_norm(p, x, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * p['scale'] + p['bias']


def _dense(p, x):
  y = x @ p['kernel']
  return y + p['bias'] if 'bias' in p else y


def _scale(bp, name, y):
  return y * bp[name]['scale'] if name in bp else y


def block_update(bp: dict, x: jnp.ndarray, attn: jnp.ndarray, num_heads: int, gate: str,
                 eps: float):
  """(the (B, T, D) update of the block's own forward pass, f(b, t, z): token t of image
  b's update with attention held fixed, as a function of its input z (D,))."""
  b, t, width = x.shape
  h, d = num_heads, width // num_heads
  ln1 = _layer_norm(bp['norm1'], x, eps)
  v = _dense(bp['attn']['qkv'], ln1)[..., 2 * width:].reshape(b, t, h, d)
  g = (jax.nn.sigmoid(_dense(bp['attn']['gate'], ln1)).reshape(b, t, h, d)
       if gate != 'none' else jnp.ones_like(v))
  vg = v * g if gate == 'g2' else v
  o = jnp.einsum('bhqk,bkhd->bqhd', attn, vg)                      # (B, T, H, d)

  def mlp(y):
    hidden = jax.nn.gelu(_dense(bp['mlp']['fc1'], _layer_norm(bp['norm2'], y, eps)),
                         approximate=False)
    return _scale(bp, 'ls_mlp', _dense(bp['mlp']['fc2'], hidden))

  def attn_out(o_tok, g_tok):
    y = o_tok * g_tok if gate == 'g1' else o_tok
    return _scale(bp, 'ls_attn', _dense(bp['attn']['proj'], y.reshape(*y.shape[:-2], width)))

  a = attn_out(o, g)
  full = a + mlp(x + a)

  def f(i, j, z):
    vz = _dense(bp['attn']['qkv'], _layer_norm(bp['norm1'], z, eps))[2 * width:].reshape(h, d)
    vz = vz * g[i, j] if gate == 'g2' else vz
    o_tok = o[i, j] + attn[i, :, j, j][:, None] * (vz - vg[i, j])
    a_tok = attn_out(o_tok, g[i, j])
    return a_tok + mlp(z + a_tok)

  return full, f


def leading_direction(jacobians: np.ndarray) -> tuple[np.ndarray, float, float]:
  """(u, s1, s2) of the mean of (K, D, D) Jacobians: its leading left singular vector,
  the largest and the second singular value."""
  u, s, _ = np.linalg.svd(np.asarray(jacobians, np.float64).mean(0))
  return u[:, 0], float(s[0]), float(s[1]) if len(s) > 1 else 0.0


def mean_jacobian_direction(bp, x, attn, num_heads, gate, eps, max_tokens: int):
  """leading_direction of the Jacobians of up to max_tokens tokens, evenly spread."""
  b, t, _ = x.shape
  flat = np.unique(np.linspace(0, b * t - 1, min(max_tokens, b * t)).round().astype(int))
  ii, jj = np.divmod(flat, t)
  _, f = block_update(bp, jnp.asarray(x, jnp.float32), jnp.asarray(attn, jnp.float32),
                      num_heads, gate, eps)
  jac = jax.jit(jax.vmap(lambda i, j, z: jax.jacfwd(lambda w: f(i, j, w))(z)))
  z = jnp.asarray(x, jnp.float32)[ii, jj]
  chunk = 32   # D tangents x chunk tokens x the MLP width at a time: bounded memory
  total = sum(np.asarray(jac(ii[k:k + chunk], jj[k:k + chunk], z[k:k + chunk]), np.float64)
              .sum(0) for k in range(0, len(ii), chunk))
  return leading_direction((total / len(ii))[None])


def alignment(u: np.ndarray, hidden: np.ndarray, outliers: np.ndarray) -> dict:
  """Mean |cos(u, token)| over the outlier tokens and over the others ((B, N, D) hidden
  states, (B, N) booleans); None where a group is empty."""
  h = np.asarray(hidden, np.float64)
  cos = np.abs(h @ u) / np.maximum(np.linalg.norm(h, axis=-1), 1e-30)
  return {'cos_high_norm': float(cos[outliers].mean()) if outliers.any() else None,
          'cos_normal': float(cos[~outliers].mean()) if (~outliers).any() else None}


def block_rows(params: dict, model_cfg, embed: np.ndarray, blocks: list, attn: list,
               lay: vit.TokenLayout, probe_cfg, max_tokens: int) -> list[dict]:
  """Per block: the singular value of the leading direction, the ratio to the second,
  and the alignment of the high-norm / other patch tokens with the direction."""
  rows = []
  inputs = [embed] + list(blocks[:-1])
  for i, (x_in, x_out, a) in enumerate(zip(inputs, blocks, attn)):
    u, s1, s2 = mean_jacobian_direction(params[f'block_{i}'], x_in, a, model_cfg.num_heads,
                                        model_cfg.gate, model_cfg.layer_norm_eps, max_tokens)
    patches = np.asarray(x_out, np.float64)[:, lay.patches]
    norms = np.linalg.norm(patches, axis=-1)
    mask = token_norms.outlier_mask(norms, probe_cfg.outlier_rule, probe_cfg.outlier_factor,
                                    probe_cfg.outlier_threshold)
    rows.append({'sigma1': s1, 'sigma1_over_sigma2': s1 / s2 if s2 > 0 else None,
                 **alignment(u, patches, mask)})
  return rows
