"""The decay/trust-ratio mask and a LAMB step derived by hand."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import optim
from vit_jax.models import vit


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


def test_schedule_warmup_then_cosine():
  cfg = ml_collections.ConfigDict(dict(lr=1e-3, lr_scaling='linear512', warmup_epochs=2,
                                       warmup_lr=1e-6, min_lr=1e-5))
  fn = optim.schedule(cfg, batch_size=1024, steps_per_epoch=10, total_epochs=12)
  peak = 2e-3  # 1e-3 x 1024 / 512
  np.testing.assert_allclose(fn(0), 1e-6, rtol=1e-5)
  np.testing.assert_allclose(fn(10), (1e-6 + peak) / 2, rtol=1e-5)
  np.testing.assert_allclose(fn(20), peak, rtol=1e-5)
  np.testing.assert_allclose(fn(70), 1e-5 + (peak - 1e-5) * 0.5, rtol=1e-4)  # halfway cosine
  np.testing.assert_allclose(fn(120), 1e-5, rtol=1e-4)
