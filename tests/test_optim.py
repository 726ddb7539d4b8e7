"""The decay/trust-ratio mask and LAMB / AdamW steps derived by hand (against timm and
torch: tests/reference/test_ref_optim.py)."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax.models import vit
from vit_jax.train import optim


def test_decay_mask_on_a_vit():
  model = vit.ViT(num_classes=5, image_size=8, patch_size=4, width=8, depth=1, num_heads=2,
                  num_registers=2, gate='g1', distillation=True, pos_embed='all')
  params = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                             jnp.ones((1, 8, 8, 3))))['params']
  flat = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == sorted([
      "['block_0']['attn']['gate']['kernel']", "['block_0']['attn']['proj']['kernel']",
      "['block_0']['attn']['qkv']['kernel']", "['block_0']['mlp']['fc1']['kernel']",
      "['block_0']['mlp']['fc2']['kernel']", "['head']['out']['kernel']",
      "['head_dist']['out']['kernel']", "['patch_embed']['kernel']"])
  for name in ("['cls']", "['dist']", "['registers']", "['pos_embedding']",
               "['block_0']['ls_attn']['scale']", "['block_0']['norm1']['bias']"):
    assert flat[name] is False


def test_lamb_first_step_by_hand():
  """Step 1 of Adam is g / (|g| + eps); LAMB rescales only the masked (matrix) update."""
  lr, wd, eps = 0.1, 0.05, 1e-8
  params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'gamma': jnp.array([1e-4, 1e-4])}
  grads = {'w': jnp.array([[0.3, -0.1], [0.2, 0.4]]), 'gamma': jnp.array([-0.01, 0.02])}
  tx = optim.lamb(lr, 0.9, 0.999, eps, wd, optim.decay_mask)
  updates, _ = tx.update(grads, tx.init(params), params)

  w, g = np.asarray(params['w'], np.float64), np.asarray(grads['w'], np.float64)
  u = g / (np.abs(g) + eps) + wd * w
  expected_w = -lr * np.linalg.norm(w) / np.linalg.norm(u) * u
  gg = np.asarray(grads['gamma'], np.float64)
  expected_gamma = -lr * gg / (np.abs(gg) + eps)   # Adam-like: no decay, no trust ratio
  chex.assert_trees_all_close(updates, {'w': expected_w, 'gamma': expected_gamma}, rtol=1e-5)


def _np_adam(grads, b1, b2, eps):
  """Bias-corrected Adam directions for a sequence of gradients (float64)."""
  m = v = 0.0
  out = []
  for t, g in enumerate(grads, 1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    out.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
  return out


def _grad_sequence(rng, shapes, steps):
  return [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(steps)]


def _run(tx, params, grads):
  state = tx.init(params)
  for g in grads:
    g = jax.tree.map(jnp.asarray, g)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_lamb_three_steps_by_hand():
  lr, wd, b1, b2, eps = 0.01, 0.05, 0.9, 0.999, 1e-6
  rng = np.random.default_rng(0)
  shapes = {'kernel': (3, 4), 'bias': (4,), 'pos_embedding': (1, 2, 4)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = _grad_sequence(rng, shapes, 3)

  expected = {k: v.copy() for k, v in params.items()}
  dirs = {k: _np_adam([g[k] for g in grads], b1, b2, eps) for k in shapes}
  for t in range(3):
    w = expected['kernel']
    u = dirs['kernel'][t] + wd * w
    expected['kernel'] = w - lr * np.linalg.norm(w) / np.linalg.norm(u) * u
    for k in ('bias', 'pos_embedding'):              # Adam-like: no decay, no trust ratio
      expected[k] = expected[k] - lr * dirs[k][t]

  tx = optim.lamb(lr, b1, b2, eps, wd, optim.decay_mask)
  got = _run(tx, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), grads)
  chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-6)


def test_adamw_with_clipping_three_steps_by_hand():
  cfg = ml_collections.ConfigDict(dict(name='adamw', b1=0.9, b2=0.999, eps=1e-8,
                                       weight_decay=0.1, clip_grad_norm=1.0,
                                       decay_scope='matrices',
                                       no_decay_params=optim.TOKEN_PARAMS))
  lr = 0.02
  rng = np.random.default_rng(1)
  shapes = {'kernel': (4, 4), 'scale': (4,)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = _grad_sequence(rng, shapes, 3)
  clipped = []
  for g in grads:
    norm = np.sqrt(sum((x**2).sum() for x in g.values()))
    clipped.append({k: x * min(1.0, 1.0 / norm) for k, x in g.items()})
  dirs = {k: _np_adam([g[k] for g in clipped], 0.9, 0.999, 1e-8) for k in shapes}
  expected = {k: v.copy() for k, v in params.items()}
  for t in range(3):
    expected['kernel'] = expected['kernel'] - lr * (dirs['kernel'][t] + 0.1 * expected['kernel'])
    expected['scale'] = expected['scale'] - lr * dirs['scale'][t]
  got = _run(optim.build(cfg, lr), jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params),
             grads)
  chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-6)


def test_layerscale_starvation_of_seed_002():
  """gamma = 1e-4: the masked chain moves it by ~lr; optax.lamb by ~lr * ||gamma|| / ||update||."""
  lr, wd = 1e-3, 0.05
  rng = np.random.default_rng(2)
  params = {'kernel': jnp.asarray(rng.normal(size=(384, 384)) * 0.02, jnp.float32),
            'ls': {'scale': jnp.full((384,), 1e-4, jnp.float32)}}
  grads = {'kernel': jnp.asarray(rng.normal(size=(384, 384)), jnp.float32),
           'ls': {'scale': jnp.asarray(rng.normal(size=384), jnp.float32)}}

  def gamma_step(tx):
    updates, _ = tx.update(grads, tx.init(params), params)
    return np.abs(np.asarray(updates['ls']['scale'], np.float64))

  g = np.asarray(grads['ls']['scale'], np.float64)
  masked = gamma_step(optim.lamb(lr, 0.9, 0.999, 1e-6, wd, optim.decay_mask))
  np.testing.assert_allclose(masked, lr * np.abs(g) / (np.abs(g) + 1e-6), rtol=1e-4)  # ~lr

  plain = gamma_step(optax.lamb(lr, weight_decay=wd, mask=optim.decay_mask))
  u = g / (np.abs(g) + 1e-6)                                 # Adam direction; decay is masked
  expected = lr * np.linalg.norm(np.full(384, 1e-4)) / np.linalg.norm(u) * np.abs(u)
  np.testing.assert_allclose(plain, expected, rtol=1e-4)
  assert masked.mean() / plain.mean() > 5000                 # starved by ~1e4 per step


def test_decay_scope_all_decays_everything_that_gets_a_gradient():
  model = vit.ViT(num_classes=5, image_size=8, patch_size=4, width=8, depth=1, num_heads=2,
                  svd_tap_layers=(1,), svd_rank=2, head='mlp', layerscale_init=0.0)
  params = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                             jnp.ones((1, 8, 8, 3))))['params']
  flat = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_leaves_with_path(optim.decay_mask(params, 'all'))}
  assert [k for k, v in flat.items() if not v] == ["['svd_proj_0']['kernel']"]


def test_no_decay_params_names_the_exempt_tokens_and_a_bad_name_is_one_line():
  """DeiT's distilled recipe decays its dist token (configs/deit_distill.py; against timm
  0.3.2's grouping in tests/reference/test_ref_optim.py); an unknown name is refused."""
  model = vit.ViT(num_classes=5, image_size=8, patch_size=4, width=8, depth=1, num_heads=2,
                  distillation=True, pos_embed='all')
  params = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                             jnp.ones((1, 8, 8, 3))))['params']
  cfg = ml_collections.ConfigDict(dict(decay_scope='matrices',
                                       no_decay_params=('cls', 'pos_embedding')))
  mask = optim.mask_fn(cfg)(params)
  assert mask['dist'] is True and mask['cls'] is False and mask['pos_embedding'] is False
  cfg.no_decay_params = ('cls', 'pos_embed')
  with pytest.raises(ValueError, match=r"optim.no_decay_params=\('cls', 'pos_embed'\) names "
                                       r"'pos_embed'; each must be one of \('cls', 'dist', "):
    optim.mask_fn(cfg)
