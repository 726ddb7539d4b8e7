"""The augmentation recipes, batched on the accelerator inside the jitted train step.

The CPU side decodes and crops; everything else runs here, in the sources' order:

1. On 8-bit values, as the sources' PIL transforms do (vit_jax/data/pil_ops.py):
   horizontal flip; RandAugment (DeiT, seed 000); DeiT-III's 3-Augment (exactly one
   of grayscale / solarize / Gaussian blur) and torchvision's ColorJitter, whose
   brightness, contrast and saturation come in a random order.
2. After ToTensor and normalisation: random erasing per image (timm's
   RandomErasing, mode 'pixel', the last transform of DeiT's loader), then mixup /
   cutmix (timm's Mixup, in DeiT's training loop), over the batch or, as DeiT on several
   processes, over each of augment.mix_groups equal groups of rows by itself.

Each image draws its own numbers from one key per batch. The draws and their
application are separate functions, so tests can give both sides the same draws.
"""
import functools
import math

import jax
import jax.numpy as jnp

from vit_jax import config_lib
from vit_jax.data import pil_ops
from vit_jax.data import randaugment

BLUR_SIGMA = (0.1, 2.0)     # DeiT-III's GaussianBlur(radius_min, radius_max)


def normalize(images, dataset_cfg):
  """0..255 values -> float32 standardised by the data set's mean and std (ToTensor, Normalize)."""
  mean = jnp.asarray(dataset_cfg.mean, jnp.float32)
  std = jnp.asarray(dataset_cfg.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


# --- 3-Augment and ColorJitter (8-bit values) --------------------------------------------

def three_augment_one(key, image):
  """DeiT-III's RandomChoice([gray_scale, Solarization, GaussianBlur]), each with p = 1."""
  k_choice, k_sigma = jax.random.split(key)
  sigma = jax.random.uniform(k_sigma, (), minval=BLUR_SIGMA[0], maxval=BLUR_SIGMA[1])
  return jax.lax.switch(jax.random.randint(k_choice, (), 0, 3), [
      pil_ops.grayscale,
      lambda x: pil_ops.solarize(x, 128),
      lambda x: pil_ops.gaussian_blur(x, sigma, BLUR_SIGMA[1]),
  ], image)


def color_jitter_draws(key, strength: float):
  """torchvision ColorJitter(s, s, s).get_params: an order of (brightness, contrast,
  saturation) and a factor for each, uniform in [max(0, 1 - s), 1 + s]."""
  k_order, k_factor = jax.random.split(key)
  order = jax.random.permutation(k_order, 3)
  factors = jax.random.uniform(k_factor, (3,), minval=max(0.0, 1 - strength),
                               maxval=1 + strength)
  return order, factors


def color_jitter_apply(image, order, factors):
  """The three adjustments (PIL's ImageEnhance Brightness, Contrast, Color) in `order`."""
  ops = [pil_ops.brightness, pil_ops.contrast, pil_ops.color]
  for i in range(3):
    image = jax.lax.switch(order[i], ops, image, factors[order[i]])
  return image


def pil_stage(key, images, a, fill=(0, 0, 0)):
  """Flip, RandAugment, 3-Augment, ColorJitter on a batch of 8-bit values (B, H, W, 3);
  `fill` is RandAugment's colour for pixels a geometric op brings in."""
  k_flip, k_rand, k_three, k_jitter = jax.random.split(key, 4)
  b = images.shape[0]
  if a.hflip:
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
  if a.randaugment_layers:
    images = randaugment.rand_augment(
        k_rand, images, policy=a.randaugment_policy, num_layers=a.randaugment_layers,
        magnitude=a.randaugment_magnitude, magnitude_std=a.randaugment_mstd,
        resample=a.randaugment_resample, fill=fill)
  if a.three_augment:
    images = jax.vmap(three_augment_one)(jax.random.split(k_three, b), images)
  if a.color_jitter:
    order, factors = jax.vmap(lambda k: color_jitter_draws(k, a.color_jitter))(
        jax.random.split(k_jitter, b))
    images = jax.vmap(color_jitter_apply)(images, order, factors)
  return images


# --- random erasing (normalised images) ----------------------------------------------------

def erase_draws(key, height: int, width: int, *, prob: float, min_area: float = 0.02,
                max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10):
  """timm RandomErasing._erase's draws: (apply, top, left, h, w) of one rectangle.

  Up to `attempts` (area, aspect) draws; the first whose box fits (h < H, w < W) is
  placed with top in [0, H - h] and left in [0, W - w], inclusive; none fitting, nothing
  is erased.
  """
  k_apply, k_area, k_aspect, k_y, k_x = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (attempts,), minval=min_area, maxval=max_area)
  area = area * height * width
  log_r = jax.random.uniform(k_aspect, (attempts,), minval=math.log(min_aspect),
                             maxval=math.log(1 / min_aspect))
  eh = jnp.round(jnp.sqrt(area * jnp.exp(log_r))).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / jnp.exp(log_r))).astype(jnp.int32)
  fits = (eh < height) & (ew < width)
  first = jnp.argmax(fits)
  eh, ew = eh[first], ew[first]
  top = jax.random.randint(k_y, (), 0, height - eh + 1)
  left = jax.random.randint(k_x, (), 0, width - ew + 1)
  apply = jax.random.bernoulli(k_apply, prob) & fits.any()
  return apply, top, left, eh, ew


def erase_apply(image, noise, apply, top, left, eh, ew):
  """Fill the rectangle with `noise` (timm mode 'pixel': per-pixel N(0, 1))."""
  h, w, _ = image.shape
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  return jnp.where(apply & box[:, :, None], noise, image)


def random_erase(key, images, *, prob: float):
  def one(k, image):
    k_draw, k_noise = jax.random.split(k)
    draws = erase_draws(k_draw, image.shape[0], image.shape[1], prob=prob)
    return erase_apply(image, jax.random.normal(k_noise, image.shape, image.dtype), *draws)
  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


# --- mixup / cutmix (the batch) ----------------------------------------------------------

CUTMIX_BOXES = ('exact', 'floor')


def cutmix_box(lam, cy, cx, height: int, width: int, rounding: str = 'exact'):
  """timm's rand_bbox around a drawn centre: sides int((H, W) * sqrt(1 - lam)), clipped.

  'exact' (timm >= 1.0): cut // 2 before the centre, (cut + 1) // 2 after it, so the
  side is the cut; 'floor' (timm 0.3-0.4, which DeiT and DeiT-III pin): cut // 2 on
  both sides, one pixel short for an odd cut. Lambda is corrected to the pasted area
  either way.
  """
  if rounding not in CUTMIX_BOXES:
    raise ValueError(f'augment.cutmix_box={rounding!r} is not one of {CUTMIX_BOXES}')
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  after = (lambda cut: (cut + 1) // 2) if rounding == 'exact' else (lambda cut: cut // 2)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + after(cut_h), 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + after(cut_w), 0, width)
  return y0, y1, x0, x1


def mix_draws(key, height: int, width: int, *, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float = 0.5, box: str = 'exact'):
  """timm Mixup._params_per_batch and cutmix_bbox_and_lam: (use_cutmix, lam, box).

  One lambda for the whole batch; with both alphas, CutMix w.p. switch_prob, its lambda
  from Beta(cutmix_alpha), mixup's from Beta(mixup_alpha); the box centre is uniform.
  """
  k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(key, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(k_switch, switch_prob)
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
  lam = jnp.where(use_cutmix, lam_cut, lam_mix)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  return use_cutmix, lam, cutmix_box(lam, cy, cx, height, width, box)


def mix_apply(images, targets, use_cutmix, lam, box):
  """Mix the batch with its reverse: CutMix pastes the box (lambda corrected to the pasted
  area), mixup blends; targets are mixed with the same lambda. -> (images, targets, lam)."""
  _, h, w, _ = images.shape
  y0, y1, x0, x1 = box
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  flipped = images[::-1]
  cut = jnp.where(inside[None, :, :, None], flipped, images)
  blended = lam * images + (1.0 - lam) * flipped
  lam = jnp.where(use_cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), lam)
  images = jnp.where(use_cutmix, cut, blended)
  return images, lam * targets + (1.0 - lam) * targets[::-1], lam


def mixup_cutmix(key, images, targets, *, mixup_alpha: float, cutmix_alpha: float,
                 switch_prob: float = 0.5, box: str = 'exact'):
  """Returns (images, targets, lam, used_cutmix)."""
  _, h, w, _ = images.shape
  use_cutmix, lam, box = mix_draws(key, h, w, mixup_alpha=mixup_alpha,
                                   cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, box=box)
  images, targets, lam = mix_apply(images, targets, use_cutmix, lam, box)
  return images, targets, lam, use_cutmix


def group_keys(key, groups: int):
  """One key per mixing group; a single group keeps `key` (the draws of one batch-wide Mixup)."""
  return key[None] if groups == 1 else jax.random.split(key, groups)


def mix_groups(key, images, targets, groups: int, **mix):
  """DeiT's Mixup on each of its processes: the batch as `groups` equal runs of rows, each
  mixed with its own reverse and its own lambda / box (mixup_cutmix). The groups are rows of
  the batch, not devices, so the result does not depend on how the batch is sharded.
  Returns (images, targets, lam, used_cutmix), the last two per group."""
  b = images.shape[0]
  if b % groups:
    raise ValueError(f'a batch of {b} rows cannot be split into augment.mix_groups={groups} '
                     f'equal groups')
  split = lambda a: a.reshape(groups, b // groups, *a.shape[1:])
  images, targets, lam, used = jax.vmap(functools.partial(mixup_cutmix, **mix))(
      group_keys(key, groups), split(images), split(targets))
  return images.reshape(b, *images.shape[2:]), targets.reshape(b, -1), lam, used


def step_mix_groups(config) -> int:
  """The groups of one train step: augment.mix_groups counts them in the global batch, and
  with grad_accum_steps k a step holds 1/k of it (k micro-batches: mix_groups / k each, or
  1 where k is a multiple of mix_groups and a group spans several micro-batches)."""
  return max(1, config.augment.mix_groups // config.grad_accum_steps)


def check_mix_groups(config) -> None:
  """Before any work: the global batch (each micro-batch) splits into equal groups."""
  g, k = config.augment.mix_groups, config.grad_accum_steps
  if not isinstance(g, int) or g < 1:
    raise ValueError(f'augment.mix_groups={g!r} must be a whole number >= 1 (1 = one Mixup '
                     f'over the global batch)')
  if not (config.augment.mixup or config.augment.cutmix):
    return
  if g % k and k % g:
    raise ValueError(f'augment.mix_groups={g} and grad_accum_steps={k}: one must divide the '
                     f'other (each micro-batch holds whole groups, or a group whole micro-batches)')
  rows, per_step = config.batch_size // k, step_mix_groups(config)
  if rows % per_step:
    raise ValueError(f'batch_size={config.batch_size} cannot be split into augment.mix_groups='
                     f'{g} equal groups (each train step of {rows} rows mixes {per_step})')


RANGES = (
    ('augment.erase_prob', 0.0, 1.0), ('augment.mix_switch_prob', 0.0, 1.0),
    ('augment.mixup', 0.0, float('inf')), ('augment.cutmix', 0.0, float('inf')),
    ('augment.color_jitter', 0.0, 0.99), ('augment.randaugment_layers', 0, 16),
    ('augment.randaugment_magnitude', 0.0, 30.0), ('augment.randaugment_mstd', 0.0, 10.0))
CHOICES = (('augment.randaugment_policy', randaugment.POLICIES),
           ('augment.randaugment_resample', pil_ops.RESAMPLES),
           ('augment.cutmix_box', CUTMIX_BOXES))


def check(config) -> None:
  """config.augment: every strength in its range, every choice known, a RandAugment level its
  policy has, a batch that splits into the mixing groups."""
  config_lib.check_ranges(config, RANGES)
  config_lib.check_choices(config, CHOICES)
  check_randaugment(config.augment)
  check_mix_groups(config)


def check_randaugment(a) -> None:
  """timm levels are in [0, 10]; torchvision magnitudes are bins 0..30 and fixed."""
  if not a.randaugment_layers:
    return
  m = a.randaugment_magnitude
  if a.randaugment_policy == 'timm' and not 0 <= m <= randaugment.TIMM_MAX_LEVEL:
    raise ValueError(f"augment.randaugment_magnitude={m} is outside [0, 10] for the 'timm' "
                     'policy')
  if a.randaugment_policy == 'torchvision':
    if not (float(m).is_integer() and 0 <= m < randaugment.TORCHVISION_BINS):
      raise ValueError(f"augment.randaugment_magnitude={m} must be a whole bin in 0..30 for "
                       "the 'torchvision' policy")
    if a.randaugment_mstd:
      raise ValueError(f'augment.randaugment_mstd={a.randaugment_mstd} must be 0 for the '
                       "'torchvision' policy (its magnitude is fixed)")


# --- the recipe ---------------------------------------------------------------------------

def augment_batch(key, images_uint8, targets, config):
  """uint8 crops -> augmented, normalised float32 images and (mixed) targets."""
  a = config.augment
  k_pil, k_erase, k_mix = jax.random.split(key, 3)
  fill = randaugment.fill_colour(a.randaugment_policy, config.dataset.mean)
  x = pil_stage(k_pil, images_uint8.astype(jnp.float32), a, fill)
  x = normalize(x, config.dataset)
  if a.erase_prob:
    x = random_erase(k_erase, x, prob=a.erase_prob)
  if a.mixup or a.cutmix:
    x, targets, _, _ = mix_groups(k_mix, x, targets, step_mix_groups(config),
                                  mixup_alpha=a.mixup, cutmix_alpha=a.cutmix,
                                  switch_prob=a.mix_switch_prob, box=a.cutmix_box)
  return x, targets
