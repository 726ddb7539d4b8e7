"""bf16 matmuls that accumulate in float32, forward and backward.

With a bfloat16 compute dtype, a plain `lax.dot_general` of bf16 inputs asks
for a bf16 result; XLA's CPU backend then runs it no faster than float32
(~140 vs ~165 GFLOP/s on the 2-core machines), while bf16 inputs with a
float32 result hit the native bf16 dot-product instructions (~310 GFLOP/s).
The default transpose rule would also feed float32 cotangents into the
backward matmuls, so the whole product is a custom VJP: all three matmuls of
a Dense layer take bf16 operands and accumulate in float32.
"""
import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (..., K) @ w (K, N) with float32 accumulation; the result has x's dtype."""
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _fwd(x, w):
  return matmul(x, w), (x, w)


def _bwd(res, g):
  x, w = res
  g = g.astype(x.dtype)
  dx = jnp.matmul(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dw = jnp.matmul(x2.T, g2, preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


matmul.defvjp(_fwd, _bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None):
  """Drop-in `dot_general` for `nn.Dense` (contracts lhs's last axis with rhs's first)."""
  del precision, preferred_element_type
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
    raise ValueError(f'dense_dot_general serves nn.Dense only, got {dimension_numbers}')
  return matmul(lhs, rhs)


def dot_general_for(dtype):
  """The Dense `dot_general` for a compute dtype: the mixed one for bf16, else XLA's."""
  return dense_dot_general if jnp.dtype(dtype) == jnp.bfloat16 else None
