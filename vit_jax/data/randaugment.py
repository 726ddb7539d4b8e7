"""RandAugment (timm's 'rand-m9-mstd0.5-inc1') for batches on the accelerator.

Per image: `num_layers` ops drawn uniformly (with replacement) from the 15
below, each applied with probability 1/2 at a magnitude drawn from
N(magnitude, magnitude_std) clipped to [0, 10]. Images are float32 in [0, 1];
pixel-level ops work on the 8-bit values PIL would see. Geometric ops use
bilinear sampling and fill with timm's mean colour (124, 116, 104).
"""
import jax
import jax.numpy as jnp

MAX_LEVEL = 10.0
FILL = (124 / 255, 116 / 255, 104 / 255)  # static: map_coordinates takes a Python cval
_GRAY = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def _u8(x):
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)


def _blend(degenerate, image, factor):
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _gray(image):
  return (image @ _GRAY)[..., None]


def auto_contrast(image, level):
  del level
  lo = image.min(axis=(0, 1), keepdims=True)
  hi = image.max(axis=(0, 1), keepdims=True)
  return jnp.where(hi > lo, (image - lo) / jnp.where(hi > lo, hi - lo, 1.0), image)


def _equalize_channel(channel):
  """PIL ImageOps.equalize on one 8-bit channel."""
  values = _u8(channel).astype(jnp.int32)
  hist = jnp.bincount(values.ravel(), length=256)
  last = jnp.max(jnp.where(hist > 0, jnp.arange(256), -1))
  step = (hist.sum() - hist[last]) // 255
  cum = jnp.cumsum(hist) - hist                        # pixels strictly below each value
  lut = jnp.clip((cum + step // 2) // jnp.maximum(step, 1), 0, 255)
  return jnp.where(step > 0, lut[values].astype(jnp.float32) / 255.0, channel)


def equalize(image, level):
  del level
  return jnp.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def invert(image, level):
  del level
  return 1.0 - image


def posterize(image, level):
  """Increasing: keep 4 - int(level / 10 * 4) bits."""
  shift = 8 - (4 - (level / MAX_LEVEL * 4).astype(jnp.int32))
  v = _u8(image).astype(jnp.int32)
  return ((v >> shift) << shift).astype(jnp.float32) / 255.0


def solarize(image, level):
  """Increasing: invert pixels >= 256 - int(level / 10 * 256)."""
  threshold = 256 - (level / MAX_LEVEL * 256).astype(jnp.int32)
  v = _u8(image)
  return jnp.where(v >= threshold, 255.0 - v, v) / 255.0


def solarize_add(image, level):
  """Add int(level / 10 * 110) to pixels below 128."""
  add = (level / MAX_LEVEL * 110).astype(jnp.int32).astype(jnp.float32)
  v = _u8(image)
  return jnp.where(v < 128, jnp.minimum(v + add, 255.0), v) / 255.0


def _factor(level, sign):
  return 1.0 + sign * level / MAX_LEVEL * 0.9        # 'Increasing' enhance ops: [0.1, 1.9]


def color(image, level, sign):
  return _blend(jnp.broadcast_to(_gray(image), image.shape), image, _factor(level, sign))


def contrast(image, level, sign):
  mean = jnp.round(_gray(_u8(image) / 255.0).mean() * 255.0) / 255.0
  return _blend(jnp.full_like(image, mean), image, _factor(level, sign))


def brightness(image, level, sign):
  return _blend(jnp.zeros_like(image), image, _factor(level, sign))


def sharpness(image, level, sign):
  """PIL's SMOOTH filter (3x3, centre 5, sum 13) as the degenerate image; borders kept."""
  kernel = jnp.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], jnp.float32) / 13.0
  smooth = jax.vmap(lambda ch: jax.scipy.signal.convolve2d(ch, kernel, mode='same'), 2, 2)(image)
  h, w, _ = image.shape
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  smooth = jnp.where(inner[..., None], smooth, image)
  return _blend(smooth, image, _factor(level, sign))


def warp(image, matrix, offset):
  """Output pixel p samples input at matrix @ (p - centre) + centre + offset (bilinear)."""
  h, w, _ = image.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij'), -1)
  src = (grid - centre) @ matrix.T + centre + offset          # (h, w, 2) as (y, x)
  sample = lambda ch, fill: jax.scipy.ndimage.map_coordinates(
      ch, [src[..., 0], src[..., 1]], order=1, mode='constant', cval=fill)
  return jnp.stack([sample(image[..., c], FILL[c]) for c in range(3)], -1)


def rotate(image, level, sign):
  theta = jnp.deg2rad(sign * level / MAX_LEVEL * 30.0)
  c, s = jnp.cos(theta), jnp.sin(theta)
  return warp(image, jnp.array([[c, -s], [s, c]]), jnp.zeros(2))


def shear_x(image, level, sign):
  return warp(image, jnp.array([[1.0, 0.0], [sign * level / MAX_LEVEL * 0.3, 1.0]]), jnp.zeros(2))


def shear_y(image, level, sign):
  return warp(image, jnp.array([[1.0, sign * level / MAX_LEVEL * 0.3], [0.0, 1.0]]), jnp.zeros(2))


def translate_x(image, level, sign):
  shift = sign * level / MAX_LEVEL * 0.45 * image.shape[1]
  return warp(image, jnp.eye(2), jnp.array([0.0, shift]))


def translate_y(image, level, sign):
  shift = sign * level / MAX_LEVEL * 0.45 * image.shape[0]
  return warp(image, jnp.eye(2), jnp.array([shift, 0.0]))


_UNSIGNED = [auto_contrast, equalize, invert, posterize, solarize, solarize_add]
_SIGNED = [color, contrast, brightness, sharpness, rotate, shear_x, shear_y, translate_x,
           translate_y]
OPS = [f.__name__ for f in _UNSIGNED + _SIGNED]


def apply_op(index, image, level, sign):
  branches = ([lambda x, l, s, f=f: f(x, l) for f in _UNSIGNED] +
              [lambda x, l, s, f=f: f(x, l, s) for f in _SIGNED])
  return jax.lax.switch(index, branches, image, level, sign)


def rand_augment_one(key, image, *, num_layers: int, magnitude: float, magnitude_std: float):
  for k in jax.random.split(key, num_layers):
    k_op, k_apply, k_level, k_sign = jax.random.split(k, 4)
    index = jax.random.randint(k_op, (), 0, len(OPS))
    level = jnp.clip(magnitude + magnitude_std * jax.random.normal(k_level), 0.0, MAX_LEVEL)
    sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0)
    image = jnp.where(jax.random.bernoulli(k_apply), apply_op(index, image, level, sign), image)
  return image


def rand_augment(key, images, *, num_layers: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5):
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: rand_augment_one(
      k, x, num_layers=num_layers, magnitude=magnitude, magnitude_std=magnitude_std))(keys, images)
