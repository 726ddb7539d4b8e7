"""Property tests of the on-device augmentations."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.data import augment


def _images(n=8, size=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


def test_grayscale_has_equal_channels():
  g = augment.grayscale(_images()[0])
  np.testing.assert_array_equal(g[..., 0], g[..., 1])
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  # ITU-R 601 luma (PIL: 0.299/0.587/0.114; dm-pix, as tf.image, uses 0.2989).
  x = _images()[0]
  np.testing.assert_allclose(g[..., 0], x @ jnp.array([0.299, 0.587, 0.114]), atol=2e-4)


def test_solarize_inverts_exactly_the_pixels_above_threshold():
  x = _images()[0]
  y = augment.solarize(x, 0.5)
  above = np.asarray(x) >= 0.5
  np.testing.assert_allclose(np.asarray(y)[above], 1 - np.asarray(x)[above], atol=1e-7)
  np.testing.assert_array_equal(np.asarray(y)[~above], np.asarray(x)[~above])


def test_three_augment_applies_exactly_one_of_three():
  x = _images(64)
  out = augment.three_augment(jax.random.key(1), x, color_jitter_strength=0.0, hflip=False)
  kinds = []
  for a, b in zip(np.asarray(x), np.asarray(out)):
    gray = np.allclose(b[..., 0], b[..., 1]) and np.allclose(b[..., 1], b[..., 2])
    sol = np.allclose(b, np.where(a >= 0.5, 1 - a, a))
    kinds.append((gray, sol))
    assert gray + sol <= 1
  counts = np.array([sum(g for g, _ in kinds), sum(s for _, s in kinds)])
  blurred = 64 - counts.sum()
  assert counts.min() > 8 and blurred > 8        # each of the three is drawn about 1/3 of the time


def test_color_jitter_factors_stay_in_range():
  x = jnp.full((4, 4, 3), 0.5)
  for seed in range(20):
    y = augment.color_jitter(jax.random.key(seed), x, 0.3)
    assert 0.35 - 1e-6 <= float(y.mean()) <= 0.65 + 1e-6   # brightness factor in [0.7, 1.3]


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


def test_random_erasing_stays_in_bounds_and_area():
  x = jnp.zeros((200, 20, 24, 3))
  out = np.asarray(augment.random_erase(jax.random.key(0), x, prob=0.5))
  erased = np.any(out != 0, axis=-1)                                # (B, H, W)
  hit = erased.any(axis=(1, 2))
  assert 0.4 < hit.mean() < 0.6
  for mask in erased[hit]:
    rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert (mask == box).all()                                      # one axis-aligned rectangle
    frac = mask.mean()
    assert 0.02 * 0.5 <= frac <= 1 / 3 + 0.1                        # rounding at 20x24
    aspect = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
    assert 0.3 / 1.5 <= aspect <= 3.3 * 1.5


def test_augmentations_jit_and_keep_shape():
  x = _images(4)
  f = jax.jit(lambda k, im: augment.random_erase(k, augment.three_augment(k, im), prob=0.25))
  y = f(jax.random.key(0), x)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())
  assert augment.blur_kernel_size(224) == 13 and augment.blur_kernel_size(16) == 13
  assert augment.blur_kernel_size(8) == 7 and math.isfinite(float(y.sum()))


def test_augment_batch_in_the_train_step_recipe():
  from vit_jax import config_lib, train
  c = config_lib.deit3_small_imagenet100(config_lib.base())   # 3-Augment, jitter, mixup/cutmix
  c.augment.update(erase_prob=0.25, randaugment_layers=2)
  c.dataset.update(mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
  images = jax.random.randint(jax.random.key(0), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  targets = jax.nn.one_hot(jnp.arange(8) % 5, 5)
  x, t = jax.jit(lambda k, i, y: train.augment_batch(k, i, y, c))(jax.random.key(1), images,
                                                                   targets)
  assert x.shape == (8, 32, 32, 3) and x.dtype == jnp.float32 and bool(jnp.isfinite(x).all())
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
  assert float(jnp.abs(t - targets).max()) > 0                  # targets were mixed
  # With everything off it is exactly the normalisation.
  c.augment.update(hflip=False, three_augment=False, color_jitter=0.0, mixup=0.0, cutmix=0.0,
                   erase_prob=0.0, randaugment_layers=0)
  x, t = train.augment_batch(jax.random.key(1), images, targets, c)
  np.testing.assert_allclose(x, (images / 255.0 - 0.5) / 0.5, atol=1e-6)
  np.testing.assert_array_equal(t, targets)
