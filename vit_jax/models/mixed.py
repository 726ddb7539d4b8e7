"""bf16 matmuls that accumulate in float32, forward and backward.

With a bfloat16 compute dtype, a plain `lax.dot_general` of bf16 inputs asks
for a bf16 result; XLA's CPU backend then runs it no faster than float32
(~140 vs ~165 GFLOP/s on the 2-core machines), while bf16 inputs with a
float32 result hit the native bf16 dot-product instructions (~310 GFLOP/s).
The default transpose rule would also feed float32 cotangents into the
backward matmuls, so the whole product is a custom VJP: all three matmuls of
a Dense layer take bf16 operands and accumulate in float32, and so does the
bias gradient.
"""
import flax.linen as nn
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


@jax.custom_vjp
def biased_matmul(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """matmul(x, w) + b, added in float32 before rounding to x's dtype.

  The bias gradient (a sum over all B x T rows) is a ones-vector matmul: as a
  reduction of bf16 cotangents XLA's CPU backend splits it into slow 32-wide
  reduce-window trees, which took ~20% of the bf16 step.
  """
  y = jnp.matmul(x, w, preferred_element_type=jnp.float32) + b.astype(jnp.float32)
  return y.astype(x.dtype)


def _biased_fwd(x, w, b):
  return biased_matmul(x, w, b), (x, w, b)


def _biased_bwd(res, g):
  x, w, b = res
  dx, dw = _bwd((x, w), g)
  g2 = g.astype(x.dtype).reshape(-1, g.shape[-1])
  ones = jnp.ones((g2.shape[0],), x.dtype)
  db = jnp.matmul(ones, g2, preferred_element_type=jnp.float32).astype(b.dtype)
  return dx, dw, db


biased_matmul.defvjp(_biased_fwd, _biased_bwd)


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
  """x @ kernel (+ bias) in `dtype`: in bf16 through `biased_matmul` / `matmul`."""
  if dtype is None or jnp.dtype(dtype) != jnp.bfloat16:
    y = jnp.matmul(x.astype(dtype or x.dtype), kernel.astype(dtype or x.dtype))
    return y if bias is None else y + bias.astype(y.dtype)
  x, w = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  return matmul(x, w) if bias is None else biased_matmul(x, w, bias)


class Dense(nn.Dense):
  """nn.Dense (same parameters) whose bf16 form runs `biased_matmul` / `matmul`."""

  @nn.compact
  def __call__(self, inputs):
    if self.dtype is None or jnp.dtype(self.dtype) != jnp.bfloat16:
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return linear(inputs, kernel, bias, self.dtype)


class SplitDense(nn.Dense):
  """nn.Dense (same parameters) returning `splits` equal column blocks of its output, each
  its own matmul on a block of the kernel. On XLA:CPU, one matmul whose output is then
  split (and the concatenation its gradient needs) cost more than the three products of
  a qkv projection: ~40% more for qkv and attention at Fashion-MNIST shapes."""
  splits: int = 3

  @nn.compact
  def __call__(self, inputs):
    kernel = self.param('kernel', self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    n = self.features // self.splits
    return tuple(linear(inputs, kernel[:, i * n:(i + 1) * n],
                        None if bias is None else bias[i * n:(i + 1) * n], self.dtype)
                 for i in range(self.splits))
