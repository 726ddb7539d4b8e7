"""`bench model` on tiny shapes: FLOP count against a hand count, the report's fields, timm."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.bench import model as bench_model
from vit_jax.models import mixed

TINY = dict(patch_size=8, width=128, depth=2, num_heads=4)   # 32x32 -> 16 patches + cls


def test_train_step_flops_match_hand_count():
  """XLA's count of the compiled step vs 3x the forward matmul FLOPs counted by hand.

  Forward: 12 w^2 weights per block seen by each of T tokens (qkv 3w^2, proj
  w^2, MLP 8w^2), QK^T and PV (2 T^2 w), patch embedding and head; a train
  step is ~3x that (forward, input and weight gradients). XLA also counts the
  elementwise work (LayerNorm, GELU, softmax, AdamW, clipping), which at
  width 128 adds ~10% (measured 1.10; 1.13 at width 64, 1.10 at 192), so the
  window [1.0, 1.15] admits it, while a missing backward matmul (<= 0.7) or a
  forward counted twice (>= 1.3) falls outside.
  """
  batch, w, d, t, p = 4, TINY['width'], TINY['depth'], 17, 16
  step = bench_model.JaxStep(bench_model.variant_config('vanilla', 32, 'float32', batch, **TINY))
  forward = batch * (d * (2 * t * 12 * w * w + 2 * 2 * t * t * w)
                     + 2 * p * (8 * 8 * 3) * w + 2 * w * 100)
  assert 1.0 <= step.flops / (3 * forward) <= 1.15
  assert step.memory_bytes > 4 * 3 * step.params   # params + two AdamW moments, float32


def test_bench_group_reports_every_field():
  g = bench_model.bench_group(['vanilla', 'svd', 'sdpa_gated'], 32, 'float32', batch=4,
                              rounds=1, warmup=0, peak_n=256, **TINY)
  assert (g['image_size'], g['patch_size'], g['batch']) == (32, 4, 4)
  assert g['matmul_peak_flops_per_s'] > 0
  for v, r in g['variants'].items():
    assert r['step_s'] > 0 and r['memory_bytes'] > 0 and r['attention_impl'] == 'xla'
  rows = g['variants']
  assert rows['vanilla']['step_over_vanilla'] == 1.0
  assert rows['svd']['flops_per_step'] > rows['vanilla']['flops_per_step']   # the projections
  assert rows['sdpa_gated']['params'] == rows['vanilla']['params'] + 2 * 128 * 128
  json.dumps(g)                                                  # the --out file can hold it
  bench_model.print_group(g)


def test_matmul_peak_runners_are_compiled_ahead_and_count_every_repeat():
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(event) if 'backend_compile' in event else None)
  runners, flops = bench_model.matmul_peaks(96, repeats=2)
  assert flops == 2 * 2 * 96**3
  assert len(compiles) >= 2                  # both were compiled while being built ...
  del compiles[:]
  runners['float32']()
  runners['bfloat16']()
  assert compiles == []                      # ... so a timed call never compiles


def test_epoch_mode_counts_whole_batches():
  e = bench_model.bench_epoch('float32', batch=4, images=10, pool=2, **TINY)
  assert (e['steps'], e['images']) == (2, 8)   # 10 images in batches of 4: two whole ones


def _dots(jaxpr):
  """Every dot_general, nested jaxprs (jit, custom_vjp) included."""
  for e in jaxpr.eqns:
    if e.primitive.name == 'dot_general':
      yield e
    for p in e.params.values():
      sub = getattr(p, 'jaxpr', p)
      if hasattr(sub, 'eqns'):
        yield from _dots(sub)


def test_mixed_matmul_accumulates_bf16_in_float32_forward_and_backward():
  x = jax.random.normal(jax.random.key(0), (3, 5, 64))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  loss = lambda x, w: (mixed.matmul(x, w).astype(jnp.float32) ** 2).sum()
  jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(xb, wb)
  dots = list(_dots(jaxpr.jaxpr))
  assert len(dots) == 3
  for e in dots:
    assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2
    assert e.params['preferred_element_type'] == jnp.float32
  # Same values as float32 math on the bf16-rounded inputs, to float32 rounding.
  ref = lambda x, w: ((x @ w) ** 2).sum()
  f32 = lambda a: a.astype(jnp.float32)
  got = jax.grad(loss, (0, 1))(xb, wb)
  want = jax.grad(ref, (0, 1))(f32(xb), f32(wb))
  for g, r in zip(got, want):
    np.testing.assert_allclose(f32(g), r, rtol=2e-2, atol=2e-2 * float(jnp.abs(r).max()))


def test_timm_runner_trains_the_same_shape():
  """In a fresh interpreter, as `bench model --timm` runs it."""
  code = """
import numpy as np
from vit_jax.bench import timm_runner as bench_timm
assert bench_timm.runner('svd', 32, 4, 2, 'float32', False) is None
step = bench_timm.runner('register', 32, 4, 2, 'bfloat16', False)
first, second = float(step()), float(step())
assert np.isfinite(first) and first != second
"""
  subprocess.run([sys.executable, '-c', code], check=True, timeout=300)


def test_fmnist_mode_times_the_recipe_step_the_bare_matmuls_and_timm():
  """The bare matmuls are the step's: their FLOPs are 80-100% of XLA's count of the whole
  compiled :fmnist step (the rest is elementwise work: LayerNorm, GELU, softmax, LAMB,
  augmentation); a matmul left out of the list (the MLP's, ~60%) or counted twice falls
  outside. One round, with timm's step beside them."""
  from vit_jax import config_lib
  c = config_lib.load('vanilla', 'fmnist')
  c.batch_size = 8
  step = bench_model.JaxStep(c)
  gemm = sum(2.0 * b * m * k * n for b, m, k, n in bench_model.step_gemms(c))
  assert 0.8 <= gemm / step.flops <= 1.0, gemm / step.flops
  out = subprocess.run(
      [sys.executable, '-m', 'vit_jax.bench', 'model', '--mode', 'fmnist', '--steps', '1',
       '--warmup', '0', '--fmnist_batches', '8', '--timm'], capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  line = [l for l in out.stdout.splitlines() if l.startswith('fmnist')][0]
  assert 'of the bare matmuls' in line and 'timm eager' in line, line


def test_dot_route_reads_the_compiled_dot(monkeypatch):
  """The probe compiles the matmul, reads its route from the optimized HLO and times it."""
  monkeypatch.setattr(bench_model, 'DOT_ROUTE_FLAGS', ('',))
  out = bench_model.dot_routes()
  assert isinstance(out['amx'], bool)
  for dtype in ('float32', 'bfloat16'):
    r = out['routes']['(default)'][dtype]
    assert 'dot_general' in r['route'] and r['gflop_s'] > 0


def test_both_onednn_flags_route_a_float32_matmul_to_onednn(monkeypatch):
  """The one oneDNN route of the pip jaxlib (results/fashion_mnist.md): both flags
  together make the float32 matmul a oneDNN fusion; each alone leaves it to YNNPACK."""
  both = '--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot'
  assert both in bench_model.DOT_ROUTE_FLAGS
  monkeypatch.setattr(bench_model, 'DOT_ROUTE_FLAGS', (both, '--xla_cpu_use_onednn=true'))
  routes = bench_model.dot_routes()['routes']
  assert any('onednn' in r for r in routes[both]['float32']['route'])
  assert not any('onednn' in r for r in routes['--xla_cpu_use_onednn=true']['float32']['route'])


def test_op_region_and_kind_read_the_hlo_metadata():
  """The classification of `--fmnist_profile`, on op names as the compiled step has them."""
  hlo = ('  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%a), kind=kCustom, metadata={op_name='
         '"jit(train_step)/transpose(jvp(ViT))/block_0/mlp/fc1/dot_general" stack_frame_id=1}\n'
         '  ROOT %copy.2 = f32[4,8]{1,0} copy(%b)\n')
  names = bench_model.hlo_op_names(hlo)
  assert names == {'ynn_fusion.3': 'jit(train_step)/transpose(jvp(ViT))/block_0/mlp/fc1/'
                   'dot_general', 'copy.2': ''}
  assert bench_model.op_region(names['ynn_fusion.3']) == 'backward'
  assert bench_model.op_kind('ynn_fusion.3', names['ynn_fusion.3']) == 'matmul'
  assert bench_model.op_region('jit(train_step)/jvp(ViT)/block_1/norm1/mul') == 'forward'
  assert bench_model.op_region('jit(train_step)/augment_batch/pil_stage/mul') == 'augmentation'
  assert bench_model.op_region('jit(train_step)/mul') == 'loss, optimizer, metrics'
  assert bench_model.op_kind('ynn_fusion.7', 'jit(train_step)/jvp(ViT)/attn/reduce_max') == \
      'elementwise'
  assert bench_model.op_kind('transpose_copy_fusion.1', '') == 'layout'


def test_own_durations_count_nested_ops_once():
  """A `while` op of 10 us running two body ops of 3 and 4 us owns 3 us; an op that starts
  where another ends is not nested in it; another thread is apart; instant events are not
  ops. The sum of own times is the threads' busy time, 10 + 2 + 5."""
  events = [{'ph': 'X', 'name': 'while.1', 'ts': 100, 'dur': 10, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'fusion.2', 'ts': 101, 'dur': 3, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'fusion.3', 'ts': 105, 'dur': 4, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'copy.4', 'ts': 110, 'dur': 2, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'fusion.5', 'ts': 102, 'dur': 5, 'pid': 1, 'tid': 2},
            {'ph': 'i', 'name': 'marker', 'ts': 103, 'pid': 1, 'tid': 1}]
  own = {e['name']: d for e, d in bench_model.own_durations(events)}
  assert own == {'while.1': 3, 'fusion.2': 3, 'fusion.3': 4, 'copy.4': 2, 'fusion.5': 5}


def test_profile_accounts_for_the_step():
  """The traced ops of the :fmnist step (batch 8) add up to most of its wall time, and
  every part a train step has shows: forward and backward matmuls, the augmentation, the
  optimizer. A trace whose ops were not matched to the module would give ~0."""
  from vit_jax import config_lib
  c = config_lib.load('vanilla', 'fmnist')
  c.batch_size = 8
  step = bench_model.JaxStep(c)
  wall_ms = bench_model.interleaved_medians({'step': step}, rounds=5, warmup=3)['step'] * 1e3
  prof = bench_model.profile_step(step, 3)
  for key in ('forward / matmul', 'backward / matmul', 'augmentation / elementwise',
              'loss, optimizer, metrics / elementwise'):
    assert prof.get(key, 0) > 0, (key, prof)
  # Tracing adds a cost per op, which differs by machine: the sum was 0.85-0.91x of the
  # untraced step on this project's AMD EPYC and 1.22x on CI's machine (1.2x failed there).
  # Counting nested ops twice is test_own_durations_count_nested_ops_once's to catch.
  assert 0.3 * wall_ms <= prof['total'] <= 1.5 * wall_ms, (prof['total'], wall_ms)
