"""RandAugment for batches on the accelerator, as each source defines it.

`config.augment.randaugment_policy` picks the definition:

- 'timm': timm's rand-m{M}-mstd{S}-inc1, the one DeiT trains with
  (rand-m9-mstd0.5-inc1). Per image, `num_layers` ops are drawn uniformly, with
  replacement, from the 15 'increasing' ops below; each is applied with
  probability 1/2, at a level drawn from N(M, S) clipped to [0, 10]. Geometric
  ops resample with DeiT's bicubic and fill with the mean colour.
- 'torchvision': torchvision.transforms.RandAugment(num_ops, magnitude), the one
  seed 000 trains with (RandAugment(2, 9)). Per image, `num_layers` ops are drawn
  uniformly from 14 (identity among them) and every one is applied, at magnitude
  bin M of 31. Geometric ops resample with nearest and fill with black.

In both, a signed op is negated with probability 1/2. Both sources apply their
ops to PIL images, so the ops here are pil_ops': 8-bit values, PIL's rounding.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from vit_jax.data import pil_ops

POLICIES = ('timm', 'torchvision')
TIMM_MAX_LEVEL = 10.0
TORCHVISION_BINS = 31


def _geometric(coeffs):
  """An op that resamples: op(image, arg, resample, fill) = pil_ops.affine of the
  coefficients coeffs(arg, height, width), which `rand_augment_one` also uses alone."""
  def op(image, arg, resample, fill):
    h, w, _ = image.shape
    return pil_ops.affine(image, coeffs(arg, h, w), resample, fill)
  op.geometric = True
  op.coeffs = coeffs
  return op


rotate = _geometric(lambda degrees, h, w: pil_ops.rotate_coeffs(degrees, h, w))
shear_x = _geometric(lambda factor, h, w: (1.0, factor, 0.0, 0.0, 1.0, 0.0))
shear_y = _geometric(lambda factor, h, w: (1.0, 0.0, 0.0, factor, 1.0, 0.0))
# Output column x shows input column x + pixels (PIL's affine offset); rows alike.
translate_x = _geometric(lambda pixels, h, w: (1.0, 0.0, pixels, 0.0, 1.0, 0.0))
translate_y = _geometric(lambda pixels, h, w: (1.0, 0.0, 0.0, 0.0, 1.0, pixels))
IDENTITY_COEFFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# --- timm: level in [0, 10] -> the op's argument (timm.data.auto_augment's level fns) -----

def _timm_enhance(level, sign, h, w):
  return jnp.maximum(0.1, 1.0 + sign * level / TIMM_MAX_LEVEL * 0.9)


TIMM_OPS = {   # name: (op, level fn (level, sign, height, width) -> argument)
    'AutoContrast': (pil_ops.auto_contrast, None),
    'Equalize': (pil_ops.equalize, None),
    'Invert': (pil_ops.invert, None),
    'Rotate': (rotate, lambda l, s, h, w: s * l / TIMM_MAX_LEVEL * 30.0),
    'PosterizeIncreasing': (pil_ops.posterize,
                            lambda l, s, h, w: 4 - jnp.floor(l / TIMM_MAX_LEVEL * 4)),
    'SolarizeIncreasing': (pil_ops.solarize, lambda l, s, h, w: 256 - jnp.minimum(
        256.0, jnp.floor(l / TIMM_MAX_LEVEL * 256))),
    'SolarizeAdd': (pil_ops.solarize_add, lambda l, s, h, w: jnp.minimum(
        128.0, jnp.floor(l / TIMM_MAX_LEVEL * 110))),
    'ColorIncreasing': (pil_ops.color, _timm_enhance),
    'ContrastIncreasing': (pil_ops.contrast, _timm_enhance),
    'BrightnessIncreasing': (pil_ops.brightness, _timm_enhance),
    'SharpnessIncreasing': (pil_ops.sharpness, _timm_enhance),
    'ShearX': (shear_x, lambda l, s, h, w: s * l / TIMM_MAX_LEVEL * 0.3),
    'ShearY': (shear_y, lambda l, s, h, w: s * l / TIMM_MAX_LEVEL * 0.3),
    'TranslateXRel': (translate_x, lambda l, s, h, w: s * l / TIMM_MAX_LEVEL * 0.45 * w),
    'TranslateYRel': (translate_y, lambda l, s, h, w: s * l / TIMM_MAX_LEVEL * 0.45 * h),
}


# --- torchvision: magnitude bin m of 31 -> the op's argument (RandAugment._augmentation_space) --

def _bin(top):
  """linspace(0, top, 31)[m]."""
  return lambda m: top * m / (TORCHVISION_BINS - 1)


def _tv_enhance(m, sign, h, w):
  return 1.0 + sign * _bin(0.9)(m)


TORCHVISION_OPS = {
    'Identity': (pil_ops.identity, None),
    'ShearX': (shear_x, lambda m, s, h, w: s * _bin(0.3)(m)),
    'ShearY': (shear_y, lambda m, s, h, w: s * _bin(0.3)(m)),
    # translate=[int(+-t), 0] moves the content by t: the affine offset is -int(t).
    'TranslateX': (translate_x, lambda m, s, h, w: -jnp.trunc(s * _bin(150.0 / 331.0 * w)(m))),
    'TranslateY': (translate_y, lambda m, s, h, w: -jnp.trunc(s * _bin(150.0 / 331.0 * h)(m))),
    'Rotate': (rotate, lambda m, s, h, w: s * _bin(30.0)(m)),
    'Brightness': (pil_ops.brightness, _tv_enhance),
    'Color': (pil_ops.color, _tv_enhance),
    'Contrast': (pil_ops.contrast, _tv_enhance),
    'Sharpness': (pil_ops.sharpness, _tv_enhance),
    'Posterize': (pil_ops.posterize,
                  lambda m, s, h, w: 8 - jnp.round(m / ((TORCHVISION_BINS - 1) / 4))),
    'Solarize': (pil_ops.solarize, lambda m, s, h, w: 255.0 - _bin(255.0)(m)),
    'AutoContrast': (pil_ops.auto_contrast, None),
    'Equalize': (pil_ops.equalize, None),
}


@dataclasses.dataclass(frozen=True)
class Policy:
  ops: dict
  apply_prob: float            # each drawn op is applied with this probability
  random_level: bool           # level ~ N(magnitude, magnitude_std) clipped to [0, 10]


POLICY = {'timm': Policy(TIMM_OPS, 0.5, True),
          'torchvision': Policy(TORCHVISION_OPS, 1.0, False)}


def op_argument(policy: str, name: str, level, sign, height: int, width: int):
  """The argument the source passes to op `name` at this level (timm) or bin (torchvision)."""
  _, arg = POLICY[policy].ops[name]
  return None if arg is None else arg(jnp.asarray(level, jnp.float32), sign, height, width)


def apply_op(policy: str, name: str, image, arg, resample: str, fill):
  """Op `name` of `policy` on an image of 8-bit values (H, W, 3), with its argument."""
  op, _ = POLICY[policy].ops[name]
  if getattr(op, 'geometric', False):
    return op(image, arg, resample, fill)
  return op(image, arg)


def fill_colour(policy: str, mean) -> tuple:
  """timm fills with the data set's mean colour (DeiT's img_mean), torchvision with black."""
  if policy == 'timm':
    return tuple(min(255, round(255 * m)) for m in mean)
  return (0, 0, 0)


def is_geometric(policy: str, name: str) -> bool:
  return getattr(POLICY[policy].ops[name][0], 'geometric', False)


def _branches(policy: str, height: int, width: int):
  """Per op, two branches for lax.switch: its affine coefficients (the identity's for an op
  that does not resample), and its pixel op (the image unchanged for one that does)."""
  coeffs, pixels = [], []
  for name, (op, _) in POLICY[policy].ops.items():
    arg = functools.partial(op_argument, policy, name, height=height, width=width)
    if is_geometric(policy, name):
      coeffs.append(lambda level, sign, op=op, arg=arg: jnp.stack(
          [jnp.asarray(v, jnp.float32) for v in op.coeffs(arg(level, sign), height, width)]))
      pixels.append(lambda image, level, sign: image)
    else:
      coeffs.append(lambda level, sign: jnp.asarray(IDENTITY_COEFFS, jnp.float32))
      pixels.append(lambda image, level, sign, op=op, arg=arg: op(image, arg(level, sign)))
  return coeffs, pixels


def rand_augment_one(key, image, *, policy: str, num_layers: int, magnitude: float,
                     magnitude_std: float, resample: str, fill):
  """One image of 8-bit values (H, W, 3) -> the same after `num_layers` drawn ops.

  Under vmap every branch of a lax.switch runs for every image, so the ops that resample
  share one affine warp, of the drawn op's coefficients: one warp per layer instead of
  one per geometric op (5x fewer; the warps were most of the cost).
  """
  p = POLICY[policy]
  h, w, _ = image.shape
  coeff_branches, pixel_branches = _branches(policy, h, w)
  geometric = jnp.asarray([is_geometric(policy, n) for n in p.ops])
  for k in jax.random.split(key, num_layers):
    k_op, k_apply, k_level, k_sign = jax.random.split(k, 4)
    index = jax.random.randint(k_op, (), 0, len(p.ops))
    level = jnp.float32(magnitude)
    if p.random_level:
      if magnitude_std > 0:
        level = level + magnitude_std * jax.random.normal(k_level)
      level = jnp.clip(level, 0.0, TIMM_MAX_LEVEL)
    sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0)
    warped = pil_ops.affine(image, tuple(jax.lax.switch(index, coeff_branches, level, sign)),
                            resample, fill)
    new = jnp.where(geometric[index], warped,
                    jax.lax.switch(index, pixel_branches, image, level, sign))
    image = new if p.apply_prob >= 1.0 else jnp.where(
        jax.random.bernoulli(k_apply, p.apply_prob), new, image)
  return image


def rand_augment(key, images, *, policy: str = 'timm', num_layers: int = 2,
                 magnitude: float = 9.0, magnitude_std: float = 0.5,
                 resample: str = 'bicubic', fill=(124, 116, 104)):
  """A batch of 8-bit values (B, H, W, 3), each image with its own draws."""
  keys = jax.random.split(key, images.shape[0])
  one = functools.partial(rand_augment_one, policy=policy, num_layers=num_layers,
                          magnitude=magnitude, magnitude_std=magnitude_std,
                          resample=resample, fill=fill)
  return jax.vmap(one)(keys, images)
