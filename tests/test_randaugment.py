"""RandAugment ops against PIL (the library timm's ops call) on 8-bit images."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest

from vit_jax.data import randaugment as ra

RNG = np.random.default_rng(0)
IMG8 = RNG.integers(20, 230, (24, 20, 3), dtype=np.uint8)
IMG8[0, 0] = [3, 250, 7]                      # some spread for autocontrast
X = jnp.asarray(IMG8, jnp.float32) / 255.0


def pil_ref(fn):
  return np.asarray(fn(Image.fromarray(IMG8)), np.float32) / 255.0


def close(got, want, atol=1.5 / 255):
  np.testing.assert_allclose(np.asarray(got), want, atol=atol)


def test_pixel_ops_match_pil():
  close(ra.invert(X, 9.0), pil_ref(ImageOps.invert), atol=1e-6)
  close(ra.auto_contrast(X, 9.0), pil_ref(ImageOps.autocontrast))
  close(ra.equalize(X, 9.0), pil_ref(ImageOps.equalize), atol=1e-6)
  # level 9: posterize keeps 4 - int(3.6) = 1 bit; solarize threshold 256 - int(230.4) = 26.
  close(ra.posterize(X, jnp.float32(9.0)), pil_ref(lambda im: ImageOps.posterize(im, 1)), atol=1e-6)
  close(ra.posterize(X, jnp.float32(0.0)), pil_ref(lambda im: ImageOps.posterize(im, 4)), atol=1e-6)
  close(ra.solarize(X, jnp.float32(9.0)), pil_ref(lambda im: ImageOps.solarize(im, 26)), atol=1e-6)
  add = pil_ref(lambda im: Image.fromarray(
      np.where(IMG8 < 128, np.minimum(IMG8.astype(int) + 99, 255), IMG8).astype(np.uint8)))
  close(ra.solarize_add(X, jnp.float32(9.0)), add, atol=1e-6)


@pytest.mark.parametrize('op,enhancer', [(ra.color, ImageEnhance.Color),
                                         (ra.contrast, ImageEnhance.Contrast),
                                         (ra.brightness, ImageEnhance.Brightness),
                                         (ra.sharpness, ImageEnhance.Sharpness)])
@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_enhance_ops_match_pil(op, enhancer, sign):
  factor = 1 + sign * 0.9 * 0.9               # level 9
  close(op(X, 9.0, sign), pil_ref(lambda im: enhancer(im).enhance(factor)), atol=2.5 / 255)


def test_geometry():
  x = jax.random.uniform(jax.random.key(0), (8, 8, 3))
  close(ra.rotate(x, 0.0, 1.0), np.asarray(x), atol=1e-6)
  close(ra.shear_x(x, 0.0, 1.0), np.asarray(x), atol=1e-6)
  # A quarter turn of the sampling grid is np.rot90 exactly.
  quarter = ra.warp(x, jnp.array([[0.0, 1.0], [-1.0, 0.0]]), jnp.zeros(2))
  close(quarter, np.rot90(np.asarray(x), k=1, axes=(0, 1)), atol=1e-6)
  # Level 10 translates by 0.45 of the width, 9 pixels of 20: like PIL's affine
  # (1, 0, 9, 0, 1, 0), output column j shows input column j + 9.
  wide = jax.random.uniform(jax.random.key(1), (4, 20, 3))
  shift = ra.translate_x(wide, 10.0, 1.0)
  close(shift[:, :11], np.asarray(wide)[:, 9:], atol=1e-6)
  np.testing.assert_allclose(np.asarray(shift[:, 11:]), np.broadcast_to(ra.FILL, (4, 9, 3)),
                             atol=1e-6)                 # filled with the mean colour


def test_rand_augment_batch():
  x = jax.random.uniform(jax.random.key(0), (64, 16, 16, 3))
  y = jax.jit(ra.rand_augment)(jax.random.key(1), x)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  unchanged = np.all(np.isclose(np.asarray(y), np.asarray(x)), axis=(1, 2, 3))
  # Each of 2 layers is applied with p 1/2: about a quarter of the images are untouched.
  assert 0.1 < unchanged.mean() < 0.45
  assert len(ra.OPS) == 15
