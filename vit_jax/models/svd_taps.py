"""Detached SVD summaries of projected patch tokens (seed 000).

Each tap projects the patch tokens of one block to `rank` dimensions with a
bias-free linear map, takes the singular values S and right singular vectors
Vh of that (N, rank) matrix, and summarises them in 2*rank + 2 numbers:
S normalised to sum 1, the diagonal of Vh, the squared mass of Vh off its
diagonal, and the entropy of the normalised spectrum. No gradient flows
through the decomposition (nor, as in the reference, into the projection).
"""
import jax
import jax.numpy as jnp

_S_MIN = 1e-6


def features_per_tap(rank: int) -> int:
  return 2 * rank + 2


def gram_svd(h: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Singular values (descending) and Vh of h (..., N, k) via eigh of h^T h.

  Signs of singular vectors are not unique; we fix each row of Vh so its
  diagonal entry is non-negative, which makes the features deterministic.
  """
  gram = jnp.einsum('...nk,...nl->...kl', h, h)
  evals, evecs = jnp.linalg.eigh(gram)           # ascending
  evals = evals[..., ::-1]
  vh = jnp.swapaxes(evecs[..., ::-1], -1, -2)    # rows = right singular vectors
  s = jnp.sqrt(jnp.clip(evals, 0.0, None))
  diag = jnp.diagonal(vh, axis1=-2, axis2=-1)
  sign = jnp.where(diag < 0, -1.0, 1.0)
  return s, vh * sign[..., :, None]


def summarize(s: jax.Array, vh: jax.Array) -> jax.Array:
  """(..., k), (..., k, k) -> (..., 2k + 2) summary features."""
  s = jnp.clip(s, _S_MIN, None)
  s_norm = s / (s.sum(-1, keepdims=True) + 1e-8)
  diag = jnp.diagonal(vh, axis1=-2, axis2=-1)
  offdiag = jnp.clip((vh**2).sum((-2, -1)) - (diag**2).sum(-1), 0.0, None)
  entropy = -(s_norm * jnp.log(jnp.clip(s_norm, 1e-8, None))).sum(-1)
  out = jnp.concatenate([s_norm, diag, offdiag[..., None], entropy[..., None]], -1)
  return jnp.where(jnp.isfinite(out), out, 0.0)


def tap_features(h_proj: jax.Array) -> jax.Array:
  """Detached float32 summary of projected tokens (B, N, k) -> (B, 2k + 2)."""
  h = jax.lax.stop_gradient(h_proj).astype(jnp.float32)
  return jax.lax.stop_gradient(summarize(*gram_svd(h)))
