"""PIL's image operations on 8-bit values, for batches on the accelerator.

The augmentations of the sources (DeiT's and seed 000's RandAugment, DeiT-III's
3-Augment and ColorJitter) run on PIL images: every op reads and writes 8-bit
values, and PIL's rounding, truncation and edge rules are part of what they do.
The functions here take one image (H, W, 3) of float32 holding the integers
0..255 and return the integers PIL returns, computed as PIL computes them
(Pillow's Blend.c, Convert.c, Filter.c, BoxBlur.c, Geometry.c and ImageOps);
tests/reference compares them with PIL itself. They are vmapped by the callers.

dm-pix has none of these semantics (it follows tf.image), hence this module.
"""
import math

import jax
import jax.numpy as jnp

RESAMPLES = ('nearest', 'bilinear', 'bicubic')


def to_uint(x):
  return jnp.round(x).astype(jnp.int32)


# --- blends and the enhance ops (ImageEnhance; torchvision's adjust_* on PIL images) ---

def blend(degenerate, image, factor):
  """Image.blend(degenerate, image, factor): the 8-bit result truncated, clipped to 0..255."""
  return jnp.clip(jnp.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def luma(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, an integer (H, W, 1)."""
  rgb = to_uint(image)
  l = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) >> 16
  return l[..., None].astype(jnp.float32)


def grayscale(image):
  """convert('L') then back to RGB (torchvision Grayscale(3) on a PIL image)."""
  return jnp.broadcast_to(luma(image), image.shape)


def brightness(image, factor):
  return blend(jnp.zeros_like(image), image, factor)


def color(image, factor):
  """ImageEnhance.Color (torchvision adjust_saturation): blend with the L image."""
  return blend(grayscale(image), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: blend with a flat image of the rounded mean of L."""
  mean = jnp.floor(luma(image).mean() + 0.5)
  return blend(jnp.full_like(image, mean), image, factor)


def smooth(image):
  """ImageFilter.SMOOTH (3x3, centre 5, others 1, / 13), rounded; the 1-pixel border is copied.

  The weighted sum of 8-bit values is an integer s, exact in float32, and s / 13 is never
  within 1/26 of a rounding boundary, so floor(s / 13 + 0.5) is PIL's value whatever the
  order of its float sums. Shifted slices, not a convolution: XLA:CPU ran the per-channel
  convolve2d ~30x slower."""
  h, w, _ = image.shape
  p = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  total = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4 * image
  conv = jnp.clip(jnp.floor(total / 13.0 + 0.5), 0.0, 255.0)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return jnp.where(inner[..., None], conv, image)


def sharpness(image, factor):
  return blend(smooth(image), image, factor)


# --- lookup-table ops (ImageOps) -------------------------------------------------------

def invert(image, arg=None):
  del arg
  return 255.0 - image


def identity(image, arg=None):
  del arg
  return image


def posterize(image, bits):
  """Keep the top `bits` bits (0 keeps none; 8 or more is the identity)."""
  bits = jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)
  mask = 255 - ((1 << (8 - bits)) - 1)
  return (to_uint(image) & mask).astype(jnp.float32)


def solarize(image, threshold):
  """Invert every value >= threshold (ImageOps.solarize: v < threshold is kept)."""
  return jnp.where(image < threshold, image, 255.0 - image)


def solarize_add(image, add, threshold=128):
  """timm's solarize_add: min(255, v + add) below the threshold, v elsewhere."""
  return jnp.where(image < threshold, jnp.minimum(image + add, 255.0), image)


def auto_contrast(image, arg=None):
  """ImageOps.autocontrast: per channel, v -> int((v - lo) * 255 / (hi - lo)); a flat channel
  is kept."""
  del arg
  lo = image.min(axis=(0, 1), keepdims=True)
  hi = image.max(axis=(0, 1), keepdims=True)
  span = jnp.where(hi > lo, hi - lo, 1.0)
  stretched = jnp.clip(jnp.floor((image - lo) * 255.0 / span), 0.0, 255.0)
  return jnp.where(hi > lo, stretched, image)


def _equalize_channel(channel):
  values = to_uint(channel)
  hist = jnp.bincount(values.ravel(), length=256)
  last = jnp.max(jnp.where(hist > 0, jnp.arange(256), -1))
  step = (hist.sum() - hist[last]) // 255
  below = jnp.cumsum(hist) - hist                     # pixels strictly below each value
  lut = (below + step // 2) // jnp.maximum(step, 1)
  return jnp.where(step > 0, jnp.clip(lut, 0, 255)[values].astype(jnp.float32), channel)


def equalize(image, arg=None):
  """ImageOps.equalize, per channel; a channel whose histogram step is 0 is kept."""
  del arg
  return jnp.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


# --- Gaussian blur (ImageFilter.GaussianBlur: three box blurs per axis, BoxBlur.c) -------

def box_radius(sigma):
  """PIL's box radius l + a whose 3 passes have the variance of a Gaussian of std sigma."""
  var = sigma * sigma / 3.0
  big_l = jnp.sqrt(12.0 * var + 1.0)
  l = jnp.floor((big_l - 1.0) / 2.0)
  a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) * (l + 1)))
  return l + a


def max_box_reach(max_sigma: float) -> int:
  """Largest l + 1 any sigma <= max_sigma needs: the static half-width of the pass."""
  var = max_sigma * max_sigma / 3.0
  return int(math.floor((math.sqrt(12.0 * var + 1.0) - 1.0) / 2.0)) + 1


def _box_pass(x, radius, reach: int, axis: int):
  """One pass of PIL's fixed-point box blur along `axis` of an integer (H, W, C) image."""
  r = jnp.floor(radius).astype(jnp.int32)
  ww = jnp.floor(float(1 << 24) / (radius * 2 + 1)).astype(jnp.uint32)
  fw = (jnp.uint32(1 << 24) - (2 * r + 1).astype(jnp.uint32) * ww) // 2
  pad = [(0, 0)] * 3
  pad[axis] = (reach, reach)
  padded = jnp.pad(x, pad, mode='edge').astype(jnp.uint32)
  n = x.shape[axis]
  acc = jnp.zeros(x.shape, jnp.uint32)
  far = jnp.zeros(x.shape, jnp.uint32)
  for i in range(-reach, reach + 1):
    shifted = jax.lax.slice_in_dim(padded, reach + i, reach + i + n, axis=axis)
    acc = acc + jnp.where(abs(i) <= r, shifted, 0)
    far = far + jnp.where(abs(i) == r + 1, shifted, 0)
  return ((acc * ww + far * fw + (1 << 23)) >> 24).astype(jnp.int32)


def gaussian_blur(image, sigma, max_sigma: float = 2.0):
  """img.filter(ImageFilter.GaussianBlur(sigma)) for sigma <= max_sigma."""
  radius = box_radius(jnp.asarray(sigma, jnp.float32))
  reach = max_box_reach(max_sigma)
  x = to_uint(image)
  for axis in (1, 0):                       # three horizontal passes, then three vertical
    for _ in range(3):
      x = _box_pass(x, radius, reach, axis)
  return x.astype(jnp.float32)


# --- the affine transform (Image.transform(AFFINE), Image.rotate) -------------------------

def _cubic(v1, v2, v3, v4, d):
  """Geometry.c's cubic convolution (a = -1) between v2 and v3 at fraction d."""
  p2 = -v1 + v3
  p3 = 2 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def affine(image, coeffs, resample: str, fill):
  """Image.transform(size, AFFINE, (a, b, c, d, e, f), resample, fillcolor=fill).

  Output pixel (x, y) samples the input at (a x' + b y' + c, d x' + e y' + f),
  x' = x + 0.5, y' = y + 0.5 (pixel centres); a sample outside [0, W) x [0, H)
  gives `fill`; interpolation clamps its neighbours to the image and truncates.
  """
  if resample not in RESAMPLES:
    raise ValueError(f'resample={resample!r} is not one of {RESAMPLES}')
  h, w, _ = image.shape
  a, b, c, d, e, f = (jnp.asarray(v, jnp.float32) for v in coeffs)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing='ij')
  xin = a * xs + b * ys + c
  yin = d * xs + e * ys + f
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  fill = jnp.asarray(fill, jnp.float32)
  if resample == 'nearest':
    xi = jnp.clip(jnp.floor(xin), 0, w - 1).astype(jnp.int32)
    yi = jnp.clip(jnp.floor(yin), 0, h - 1).astype(jnp.int32)
    return jnp.where(inside[..., None], image[yi, xi], fill)
  x0 = jnp.floor(xin - 0.5)
  y0 = jnp.floor(yin - 0.5)
  dx, dy = (xin - 0.5 - x0)[..., None], (yin - 0.5 - y0)[..., None]
  col = lambda k: jnp.clip(x0 + k, 0, w - 1).astype(jnp.int32)
  row = lambda k: jnp.clip(y0 + k, 0, h - 1).astype(jnp.int32)
  if resample == 'bilinear':
    line = lambda j: image[row(j), col(0)] + dx * (image[row(j), col(1)] - image[row(j), col(0)])
    top, bottom = line(0), line(1)
    value = top + dy * (bottom - top)
  else:
    line = lambda j: _cubic(*(image[row(j), col(k)] for k in (-1, 0, 1, 2)), dx)
    value = _cubic(line(-1), line(0), line(1), line(2), dy)
  value = jnp.clip(jnp.floor(value), 0.0, 255.0)
  return jnp.where(inside[..., None], value, fill)


def rotate_coeffs(degrees, height: int, width: int):
  """Image.rotate(degrees): counter-clockwise about (W / 2, H / 2), as affine coefficients."""
  angle = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2, height / 2
  c = cos * -cx + sin * -cy + cx
  f = -sin * -cx + cos * -cy + cy
  return cos, sin, c, -sin, cos, f
