"""config.dtype='bfloat16' asserted on the train step itself: the dtypes of the operations in
the jaxpr of the step that CompiledSteps compiles (forward, backward and update), where the
other bf16 tests only check closeness to float32, which a silently float32 step passes.

README's promise, op by op: the model's matmuls (every Dense layer, forward and both
backward products, and the attention products) take bf16 operands, the Dense ones
accumulating in float32 (vit_jax/models/mixed.py); the patch embedding convolves bf16;
LayerNorm statistics (rsqrt of the variance) stay float32, as do the head, the loss and the
parameters. A float32 config has no bf16 value anywhere."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import config_lib
from vit_jax.train import steps

DEPTH = 2
DENSE_PER_BLOCK = 4      # qkv, proj, fc1, fc2
PRODUCTS = 4             # each Dense: forward, input and kernel gradients, bias gradient


def _eqns(jaxpr):
  """Every equation, those of nested jaxprs (jit, custom_vjp, cond branches) included."""
  for e in getattr(jaxpr, 'jaxpr', jaxpr).eqns:
    yield e
    for value in e.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if hasattr(getattr(sub, 'jaxpr', sub), 'eqns'):
          yield from _eqns(sub)


def _step_ops(dtype: str) -> collections.Counter:
  """(primitive, operand dtypes, preferred_element_type) -> count, over the train step;
  ('output', dtypes of what the step returns: its new state and metrics, '') too."""
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=DEPTH, width=32, num_heads=2)
  c.update(dtype=dtype, batch_size=4)
  compiled = steps.CompiledSteps(c)
  state = compiled.setup(steps_per_epoch=1)
  batch = compiled.global_batch({'image': np.zeros((4, 16, 16, 3), np.uint8),
                                'label': np.zeros(4, np.int32)})
  jaxpr = jax.make_jaxpr(compiled.jitted_step)(state, batch, None)
  ops = collections.Counter()
  ops[('output', tuple(sorted({str(a.dtype) for a in jaxpr.out_avals})), '')] = 1
  for e in _eqns(jaxpr):
    operands = tuple(str(v.aval.dtype) for v in e.invars if hasattr(v.aval, 'dtype'))
    results = tuple(str(v.aval.dtype) for v in e.outvars if hasattr(v.aval, 'dtype'))
    ops[(e.primitive.name, operands, str(e.params.get('preferred_element_type')))] += 1
    ops[('any result', results, '')] += 1
  return ops


def _count(ops, name=None, operands=None, preferred=None) -> int:
  return sum(n for (p, o, pref), n in ops.items()
             if (name is None or p == name) and (operands is None or o == operands)
             and (preferred is None or pref == preferred))


@pytest.fixture(scope='module')
def bf16_ops():
  return _step_ops('bfloat16')


def test_bfloat16_step_multiplies_in_bf16_and_accumulates_in_float32(bf16_ops):
  bf16, f32 = ('bfloat16', 'bfloat16'), ('float32', 'float32')
  dense = _count(bf16_ops, 'dot_general', bf16, 'float32')
  assert dense >= DEPTH * DENSE_PER_BLOCK * PRODUCTS, dense
  assert _count(bf16_ops, 'conv_general_dilated', bf16) >= 1         # the patch embedding
  assert _count(bf16_ops, 'conv_general_dilated', f32) == 0
  # float32 products: only the head (forward, its two gradients), which runs in float32
  assert _count(bf16_ops, 'dot_general', f32) <= 3


def test_bfloat16_step_keeps_state_and_statistics_in_float32(bf16_ops):
  # params, optimizer state, loss and metrics; int32: the step counters
  (outputs,) = [o for (p, o, _) in bf16_ops if p == 'output']
  assert set(outputs) == {'float32', 'int32'}, outputs
  rsqrt = _count(bf16_ops, 'rsqrt')
  assert rsqrt >= 2 * DEPTH + 1                    # every LayerNorm's variance
  assert _count(bf16_ops, 'rsqrt', ('float32',)) == rsqrt


def test_float32_step_has_no_bf16_value():
  ops = _step_ops('float32')
  assert not [k for k in ops if 'bfloat16' in k[1]]
  assert _count(ops, 'dot_general') > DEPTH * DENSE_PER_BLOCK * PRODUCTS


@pytest.mark.parametrize('use_bias', [True, False])
def test_bf16_dense_products_accumulate_in_float32_and_match_torch(use_bias):
  """mixed.Dense in bf16, with and without bias: each product of its forward and backward
  (forward, input and kernel gradients, and the bias gradient) takes bf16 operands and
  accumulates in float32, and the gradients equal torch's float32 autograd of
  sum((x @ w + b)^2) on the bf16-rounded inputs, to bf16 rounding (2% of the largest)."""
  import torch
  from vit_jax.models import mixed
  layer = mixed.Dense(24, use_bias=use_bias, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (3, 5, 64))
  params = layer.init(jax.random.key(1), x)['params']
  if use_bias:
    params['bias'] = jax.random.normal(jax.random.key(2), (24,))
  loss = lambda p, x: (layer.apply({'params': p}, x).astype(jnp.float32) ** 2).sum()
  grad = jax.grad(loss, (0, 1))
  dots = [e for e in _eqns(jax.make_jaxpr(grad)(params, x)) if e.primitive.name == 'dot_general']
  assert len(dots) == 3 + use_bias
  for e in dots:
    assert [str(v.aval.dtype) for v in e.invars] == ['bfloat16'] * 2
    assert e.params['preferred_element_type'] == jnp.float32
  got_p, got_x = grad(params, x)
  rounded = lambda a: torch.tensor(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32),
                                   requires_grad=True)
  xt, wt = rounded(x), rounded(params['kernel'])
  bt = rounded(params['bias']) if use_bias else torch.zeros(24)
  ((xt @ wt + bt) ** 2).sum().backward()
  pairs = [(got_x, xt.grad), (got_p['kernel'], wt.grad)]
  if use_bias:
    pairs.append((got_p['bias'], bt.grad))
  for g, want in pairs:
    want = want.numpy()
    np.testing.assert_allclose(np.asarray(g, np.float32), want, rtol=0,
                               atol=0.02 * np.abs(want).max())
