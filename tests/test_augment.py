"""Properties of the on-device augmentations derived by hand (the comparisons with the
sources' own code are in tests/reference/test_ref_augment.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.data import augment


def _images(n=8, size=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


def test_mixup_lambda_follows_beta():
  x = _images(4)
  t = jax.nn.one_hot(jnp.arange(4), 4)
  lams = jax.vmap(lambda k: augment.mixup_cutmix(k, x, t, mixup_alpha=0.8, cutmix_alpha=0.0)[2])(
      jax.random.split(jax.random.key(0), 4000))
  lams = np.asarray(lams)
  # Beta(0.8, 0.8): mean 1/2, variance a^2 / ((2a)^2 (2a + 1)) = 1 / (4 * 2.6).
  assert abs(lams.mean() - 0.5) < 0.02
  assert abs(lams.var() - 1 / (4 * 2.6)) < 0.01
  # The mixed images and targets use that lambda.
  img, tgt, lam, used_cut = augment.mixup_cutmix(jax.random.key(3), x, t, mixup_alpha=0.8,
                                                 cutmix_alpha=0.0)
  assert not bool(used_cut)
  np.testing.assert_allclose(img, lam * x + (1 - lam) * x[::-1], atol=1e-6)
  np.testing.assert_allclose(tgt, lam * t + (1 - lam) * t[::-1], atol=1e-6)


def test_cutmix_label_weight_equals_pasted_area():
  x = _images(6, size=32)
  t = jax.nn.one_hot(jnp.arange(6), 6)
  for seed in range(20):
    img, tgt, lam, used_cut = augment.mixup_cutmix(jax.random.key(seed), x, t, mixup_alpha=0.0,
                                                   cutmix_alpha=1.0)
    assert bool(used_cut)
    from_other = np.asarray(np.all(img != x, axis=-1)[0])           # pixels that changed
    pasted = np.asarray(np.all(img == x[::-1], axis=-1)[0]) & ~np.asarray(np.all(x == x[::-1], -1)[0])
    area = pasted.mean()
    assert from_other.mean() == pytest.approx(area)
    np.testing.assert_allclose(tgt[0, 0], 1 - area, atol=1e-6)     # own label keeps the rest
    np.testing.assert_allclose(tgt[0, 5], area, atol=1e-6)         # partner gets the pasted share
    np.testing.assert_allclose(lam, 1 - area, atol=1e-6)


def test_switch_probability():
  x = _images(2)
  t = jax.nn.one_hot(jnp.arange(2), 2)
  used = jax.vmap(lambda k: augment.mixup_cutmix(k, x, t, mixup_alpha=0.8, cutmix_alpha=1.0,
                                                 switch_prob=0.5)[3])(
      jax.random.split(jax.random.key(1), 2000))
  assert abs(float(used.mean()) - 0.5) < 0.04


def test_augmentations_jit_and_keep_shape():
  x = _images(4) * 255.0
  f = jax.jit(lambda k, im: augment.random_erase(
      k, jax.vmap(augment.three_augment_one)(jax.random.split(k, 4), im), prob=0.25))
  y = f(jax.random.key(0), x)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())


def test_augment_batch_in_the_train_step_recipe():
  from vit_jax import config_lib
  c = config_lib.load('vanilla')   # 3-Augment, jitter, mixup/cutmix
  c.augment.update(erase_prob=0.25, randaugment_layers=2)
  c.dataset.update(mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
  images = jax.random.randint(jax.random.key(0), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  targets = jax.nn.one_hot(jnp.arange(8) % 5, 5)
  x, t = jax.jit(lambda k, i, y: augment.augment_batch(k, i, y, c))(jax.random.key(1), images,
                                                                     targets)
  assert x.shape == (8, 32, 32, 3) and x.dtype == jnp.float32 and bool(jnp.isfinite(x).all())
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
  assert float(jnp.abs(t - targets).max()) > 0                  # targets were mixed
  # With everything off it is exactly the normalisation.
  c.augment.update(hflip=False, three_augment=False, color_jitter=0.0, mixup=0.0, cutmix=0.0,
                   erase_prob=0.0, randaugment_layers=0)
  x, t = augment.augment_batch(jax.random.key(1), images, targets, c)
  np.testing.assert_allclose(x, (images / 255.0 - 0.5) / 0.5, atol=1e-6)
  np.testing.assert_array_equal(t, targets)


def test_one_mixing_group_is_the_batch_wide_mixup():
  """mix_groups=1 draws and mixes exactly as one Mixup over the batch (the draws of runs
  made before the field existed); 2 groups pair rows within each half only."""
  x = _images(8)
  t = jax.nn.one_hot(jnp.arange(8) % 4, 4)
  mix = dict(mixup_alpha=0.8, cutmix_alpha=0.0)
  whole = augment.mixup_cutmix(jax.random.key(5), x, t, **mix)
  grouped = augment.mix_groups(jax.random.key(5), x, t, 1, **mix)
  for a, b in zip(whole, grouped):
    np.testing.assert_array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))
  _, tg, lam, _ = augment.mix_groups(jax.random.key(5), x, t, 2, **mix)
  assert lam.shape == (2,) and float(lam[0]) != float(lam[1])
  for g, rows in enumerate((range(4), range(4, 8))):
    for i in rows:      # row i with its group's mirror row, by the group's own lambda
      j = rows[-1] - (i - rows[0])
      np.testing.assert_allclose(tg[i], lam[g] * t[i] + (1 - lam[g]) * t[j], atol=1e-6)


@pytest.mark.parametrize('groups,accum,batch,error', [
    (4, 1, 64, None), (4, 2, 64, None), (1, 4, 64, None), (8, 4, 64, None),
    (3, 1, 64, 'batch_size=64 cannot be split into augment.mix_groups=3 equal groups'),
    (0, 1, 64, 'augment.mix_groups=0 must be a whole number >= 1'),
    (3, 2, 66, 'augment.mix_groups=3 and grad_accum_steps=2: one must divide the other'),
])
def test_mix_groups_are_checked_in_one_line(groups, accum, batch, error):
  from vit_jax import config_lib
  c = config_lib.load('vanilla')
  c.update(batch_size=batch, grad_accum_steps=accum)
  c.augment.mix_groups = groups
  if error is None:
    augment.check_mix_groups(c)
    assert augment.step_mix_groups(c) == max(1, groups // accum)
    return
  with pytest.raises(ValueError, match=error):
    augment.check_mix_groups(c)
  c.augment.update(mixup=0.0, cutmix=0.0)     # no mixing: only the type is checked
  if groups:
    augment.check_mix_groups(c)
