"""The ViT family: pinned parameter counts, shapes, and a float64 numpy reference forward."""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import layers
from vit_jax.models import svd_taps
from vit_jax.models import token_norms
from vit_jax.models import variants
from vit_jax.models import vit


def n_params(model, image_size):
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                             jnp.zeros((1, image_size, image_size, 3))))
  return models.count_params(shapes['params'])


# --- pinned parameter counts ------------------------------------------------

# Seed 002 (timm deit3_small_patch16_224 with 100 classes): 21.71M / 23.48M.
DEIT3_S = dict(num_classes=100, layerscale_init=1e-4, pos_embed='patches')
# Seed 000's torch model: pre-norm TransformerEncoderLayer, qkv bias, MLP head.
DEIT_S4 = dict(num_classes=100, image_size=32, patch_size=4, layerscale_init=0.0,
               pos_embed='all', head='mlp')
# The reference also builds a LayerNorm it never calls (patch_norm: 384 + 384).
SEED000_UNUSED_NORM = 768


@pytest.mark.parametrize('kwargs,expected', [
    (dict(), 21_712_996),
    (dict(num_registers=4), 21_712_996 + 4 * 384),
    (dict(gate='g1'), 21_712_996 + 12 * 384 * 384),
    (dict(gate='g2'), 21_712_996 + 12 * 384 * 384),
])
def test_deit3_small_param_counts(kwargs, expected):
  count = n_params(vit.ViT(**DEIT3_S, **kwargs), 224)
  assert count == expected
  assert round(count / 1e6, 2) == (23.48 if 'gate' in kwargs else 21.71)


@pytest.mark.parametrize('taps,reference', [((), 21_526_372), ((3, 6, 9, 12), 21_676_900)])
def test_seed000_param_counts(taps, reference):
  count = n_params(vit.ViT(**DEIT_S4, svd_tap_layers=taps), 32)
  assert count == reference - SEED000_UNUSED_NORM


def test_deit_small_distilled_param_count():
  # Published DeiT-S distilled (ImageNet-1k): 22,436,432 (22.4M).
  model = vit.ViT(num_classes=1000, layerscale_init=0.0, pos_embed='all', distillation=True)
  assert n_params(model, 224) == 22_436_432


# --- shapes -------------------------------------------------------------------

TINY = dict(num_classes=7, image_size=16, patch_size=4, width=32, depth=3, num_heads=4)
VARIANTS = {
    **variants.VARIANTS,   # the study's four
    'svd': dict(svd_tap_layers=(1, 3), svd_rank=5, head='mlp', layerscale_init=0.0),
    'distill': dict(distillation=True, pos_embed='all', layerscale_init=0.0),
}


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_variant_shapes(name):
  model = vit.ViT(**TINY, **VARIANTS[name])
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  params = model.init({'params': jax.random.key(0)}, x)['params']
  logits, out = model.apply({'params': params}, x, capture=True)
  n_tok = 16 + 1 + model.num_registers + int(model.distillation)
  chex.assert_shape(logits, (2, 7))
  chex.assert_shape(out['patch_tokens'], (2, 16, 32))
  chex.assert_shape(out['pre_logits'], (2, 32))
  chex.assert_shape(out['blocks'], [(2, n_tok, 32)] * 3)
  chex.assert_shape(out['attn'], [(2, 4, n_tok, n_tok)] * 3)
  chex.assert_shape(out['gates'], [(2, n_tok, 4, 8)] * 3 if model.gate != 'none' else [])
  if model.distillation:
    chex.assert_shape([out['cls_logits'], out['dist_logits']], [(2, 7)] * 2)
    np.testing.assert_allclose(logits, (out['cls_logits'] + out['dist_logits']) / 2, rtol=1e-6)
  for p in out['attn']:
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  # The fused attention path (no capture) computes the same function.
  np.testing.assert_allclose(model.apply({'params': params}, x)[0], logits, atol=1e-5)


def test_registers_change_no_output_shape():
  x = jnp.ones((3, 16, 16, 3))
  shapes = []
  for k in (0, 1, 4):
    model = vit.ViT(**TINY, num_registers=k)
    shapes.append(jax.tree.map(jnp.shape, jax.eval_shape(
        lambda: model.init_with_output({'params': jax.random.key(0)}, x)[0])))
  assert shapes[0] == shapes[1] == shapes[2]


@pytest.mark.parametrize('pos_embed,distill,registers,expected_len', [
    ('patches', False, 4, 16),  # DeiT-III: patches only; registers never
    ('all', False, 4, 17),      # original DeiT: cls too
    ('all', True, 0, 18),       # ... and the dist token
])
def test_position_embedding_convention(pos_embed, distill, registers, expected_len):
  model = vit.ViT(**TINY, pos_embed=pos_embed, distillation=distill, num_registers=registers)
  params = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                             jnp.ones((1, 16, 16, 3))))['params']
  assert params['pos_embedding'].shape == (1, expected_len, 32)


def test_drop_path_rates_linear_in_depth():
  assert layers.drop_path_rates(0.1, 3) == [0.0, 0.05, 0.1]
  assert layers.drop_path_rates(0.0, 12) == [0.0] * 12


def test_drop_path_rescales_kept_samples():
  x = jnp.ones((4000, 3))
  y = layers.DropPath(0.25).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)})
  values = set(np.unique(np.asarray(y)).tolist())
  assert values == {0.0, float(np.float32(1) / np.float32(0.75))}
  assert abs(float((y[:, 0] > 0).mean()) - 0.75) < 0.03
  rows_constant = np.all(y == y[:, :1], axis=1)  # whole sample kept or dropped
  assert rows_constant.all()


@pytest.mark.parametrize('gate', ['g1', 'g2'])
def test_saturated_gate_reproduces_ungated_model(gate):
  """With sigmoid(X W) == 1 everywhere, G1/G2 are the plain model."""
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  plain = vit.ViT(**TINY)
  params = plain.init({'params': jax.random.key(0)}, x)['params']
  params = jax.tree_util.tree_map_with_path(
      # LayerNorm output then has channel sum = width * 1 > 0, so X @ (100 * ones) >> 0.
      lambda p, v: jnp.ones_like(v) if 'norm1' in str(p) and 'bias' in str(p) else v, params)
  gated = vit.ViT(**TINY, gate=gate)
  gated_params = jax.tree.map(lambda v: v, params)
  for i in range(TINY['depth']):
    gated_params[f'block_{i}']['attn']['gate'] = {'kernel': jnp.full((32, 32), 100.0)}
  logits_g, out = gated.apply({'params': gated_params}, x, capture=True)
  assert all(bool(jnp.all(g == 1.0)) for g in out['gates'])
  np.testing.assert_allclose(logits_g, plain.apply({'params': params}, x)[0], atol=1e-6)


# --- a float64 numpy reference of the whole forward pass ---------------------

def _np_layernorm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _np_dense(x, p):
  return x @ p['kernel'] + p.get('bias', 0.0)


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_vit(params, images, m: vit.ViT):
  """Independent float64 forward: timm/DeiT block semantics written out by hand."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  b, s = images.shape[0], m.patch_size
  g = m.image_size // s
  patches = images.reshape(b, g, s, g, s, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
  x = patches @ p['patch_embed']['kernel'].reshape(-1, m.width) + p['patch_embed']['bias']
  special = [p['cls']] + ([p['dist']] if m.distillation else [])
  special = [np.repeat(t, b, 0) for t in special]
  if m.pos_embed == 'patches':
    x = np.concatenate(special + [x + p['pos_embedding']], 1)
  else:
    x = np.concatenate(special + [x], 1) + p['pos_embedding']
  n_special = len(special)
  if m.num_registers:
    x = np.concatenate([x[:, :n_special], np.repeat(p['registers'], b, 0), x[:, n_special:]], 1)
  h, d = m.num_heads, m.width // m.num_heads
  for i in range(m.depth):
    bp = p[f'block_{i}']
    y = _np_layernorm(x, bp['norm1'], m.layer_norm_eps)
    t = x.shape[1]
    q, k, v = _np_dense(y, bp['attn']['qkv']).reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4)
    if m.gate != 'none':
      gate = 1 / (1 + np.exp(-(y @ bp['attn']['gate']['kernel'])))
      gate = gate.reshape(b, t, h, d).transpose(0, 2, 1, 3)
      if m.gate == 'g2':
        v = v * gate
    a = _np_softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)) @ v      # (b, h, t, d)
    if m.gate == 'g1':
      a = a * gate
    y = _np_dense(a.transpose(0, 2, 1, 3).reshape(b, t, -1), bp['attn']['proj'])
    x = x + (y * bp['ls_attn']['scale'] if m.layerscale_init else y)
    y = _np_layernorm(x, bp['norm2'], m.layer_norm_eps)
    y = _np_dense(_np_gelu(_np_dense(y, bp['mlp']['fc1'])), bp['mlp']['fc2'])
    x = x + (y * bp['ls_mlp']['scale'] if m.layerscale_init else y)
  x = _np_layernorm(x, p['norm'], m.layer_norm_eps)

  def head(feat, hp):
    if m.head == 'mlp':
      feat = _np_layernorm(_np_gelu(_np_dense(feat, hp['hidden'])), hp['norm'], m.layer_norm_eps)
    return _np_dense(feat, hp['out'])

  logits = head(x[:, 0], p['head'])
  if m.distillation:
    logits = (logits + head(x[:, 1], p['head_dist'])) / 2
  return logits


@pytest.mark.parametrize('name', ['vanilla', 'register', 'sdpa_gated', 'value_gated', 'distill'])
def test_forward_matches_numpy_reference(name):
  extra = dict(head='mlp', layerscale_init=0.5) if name == 'vanilla' else {}
  model = vit.ViT(**TINY, **{**VARIANTS[name], **extra})
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  params = model.init({'params': jax.random.key(4)}, x)['params']
  # Random (not init-constant) norms and LayerScale so every parameter matters.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  params = jax.tree.unflatten(tree, [l + 0.1 * jax.random.normal(k, l.shape)
                                     for l, k in zip(leaves, keys)])
  with jax.default_matmul_precision('highest'):
    got = model.apply({'params': params}, x)[0]
  np.testing.assert_allclose(got, np_vit(params, np.asarray(x, np.float64), model), atol=2e-4)


# --- SVD taps -------------------------------------------------------------------

def test_gram_svd_matches_numpy_svd():
  h = np.random.default_rng(0).normal(size=(3, 20, 6)).astype(np.float32)
  s, vh = svd_taps.gram_svd(jnp.asarray(h, jnp.float64 if jax.config.x64_enabled else jnp.float32))
  _, s_ref, vh_ref = np.linalg.svd(h.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(s, s_ref, rtol=1e-4)
  np.testing.assert_allclose(np.abs(vh), np.abs(vh_ref), atol=2e-3)
  assert np.all(np.diagonal(np.asarray(vh), axis1=-2, axis2=-1) >= 0)


def test_tap_features_hand_values():
  # h = diag(3, 1) padded: S = (3, 1), Vh = I.
  h = jnp.zeros((1, 4, 2)).at[0, 0, 0].set(3.0).at[0, 1, 1].set(1.0)
  f = svd_taps.tap_features(h)[0]
  p = np.array([0.75, 0.25])
  expected = [0.75, 0.25, 1.0, 1.0, 0.0, -(p * np.log(p)).sum()]
  np.testing.assert_allclose(f, expected, atol=1e-5)
  assert f.dtype == jnp.float32 and f.shape == (svd_taps.features_per_tap(2),)


def test_outlier_rule_by_hand():
  """config.probe: an outlier's norm is above factor x the median ('relative') or above the
  threshold ('absolute'); a norm exactly at the limit is not one."""
  norms = np.array([[1.0, 1.0, 2.0, 1.0], [1.0, 2.5, 1.0, 1.0]])     # median 1
  probe = ml_collections.ConfigDict(dict(outlier_rule='relative', outlier_factor=2.0,
                                         outlier_threshold=2.0))
  np.testing.assert_array_equal(token_norms.outlier_mask(norms, 'relative', 2.0, 0.0),
                                norms > 2.0)
  assert token_norms.stats(norms, probe) == pytest.approx(
      {'l2_norm_mean': 10.5 / 8, 'l2_norm_std': np.sqrt(np.mean((norms - 10.5 / 8) ** 2)),
       'l2_outlier_ratio': 1 / 8})
  probe.update(outlier_rule='absolute', outlier_threshold=1.0)
  assert token_norms.stats(norms, probe)['l2_outlier_ratio'] == 2 / 8


def test_svd_taps_are_detached():
  model = vit.ViT(**TINY, **VARIANTS['svd'])
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  params = model.init({'params': jax.random.key(0)}, x)['params']
  grads = jax.grad(lambda p: model.apply({'params': p}, x)[0].sum())(params)
  assert float(jnp.abs(grads['svd_proj_0']['kernel']).max()) == 0.0
  assert float(jnp.abs(grads['head']['hidden']['kernel']).max()) > 0.0
  assert params['head']['hidden']['kernel'].shape == (32 + 2 * (2 * 5 + 2), 32)


def test_build_model_rejects_bad_values():
  cfg = ml_collections.ConfigDict(dict(TINY, gate='g3'))
  del cfg['num_classes']
  with pytest.raises(ValueError, match=r"model.gate='g3' is not one of \('none', 'g1', 'g2'\)"):
    models.build_model(cfg, 7)
  cfg.gate = 'none'
  cfg.svd_tap_layers = (0, 9)
  with pytest.raises(ValueError, match=r'svd_tap_layers has \[0, 9\]; layers are 1..3'):
    models.build_model(cfg, 7)


def test_bfloat16_compute_tracks_float32():
  """bf16 Dense layers (bf16 operands, float32 accumulation) keep the float32 model's outputs."""
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  params = vit.ViT(**TINY).init({'params': jax.random.key(0)}, x)['params']
  want = vit.ViT(**TINY).apply({'params': params}, x, capture=True)[1]['pre_logits']
  for capture in (False, True):   # dot_product_attention, and the explicit-softmax path
    got = vit.ViT(**TINY, dtype=jnp.bfloat16).apply({'params': params}, x, capture=capture)[1]
    np.testing.assert_allclose(got['pre_logits'], want, atol=0.05 * float(jnp.abs(want).max()))


def test_attention_impl_is_checked():
  with pytest.raises(ValueError, match=r"model.attention_impl='flash' is not one of"):
    vit.ViT(**TINY, attention_impl='flash')._check()
