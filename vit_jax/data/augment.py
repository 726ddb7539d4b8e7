"""Batched augmentations that run on the accelerator, inside the jitted train step.

Images are float32 in [0, 1], (B, H, W, 3); each image draws its own random
numbers from one key per batch. The CPU side only decodes and crops.

- DeiT-III 3-Augment: horizontal flip, then exactly one of grayscale /
  solarize / gaussian blur, then ColorJitter(0.3, 0.3, 0.3).
- Mixup / CutMix (timm semantics: one lambda per batch, the batch paired with
  its reverse, CutMix with probability `switch_prob`, lambda corrected to the
  pasted area) on smoothed one-hot targets.
- Random erasing (DeiT: p 0.25, one rectangle of 2%-33% of the area, aspect
  ratio log-uniform in [0.3, 3.3], filled with per-pixel normal noise),
  applied after normalisation.

dm-pix supplies grayscale, solarize, blur and flip. ColorJitter is written
here because dm-pix follows tf.image (additive brightness, per-channel
contrast mean, HSV saturation), not torchvision, whose semantics DeiT-III uses.
"""
import math

import dm_pix as pix
import jax
import jax.numpy as jnp

GRAYSCALE, SOLARIZE, BLUR = 0, 1, 2


def grayscale(image):
  return jnp.broadcast_to(pix.rgb_to_grayscale(image, keep_dims=True), image.shape)


def solarize(image, threshold: float = 0.5):
  """Invert every pixel value >= threshold (PIL ImageOps.solarize at 128/255)."""
  return jnp.where(image >= threshold, 1.0 - image, image)


def blur(image, sigma, kernel_size: int):
  return pix.gaussian_blur(image, sigma, kernel_size)


def normalize(images, dataset_cfg):
  """uint8-range pixels -> float32 standardised by the data set's mean and std."""
  mean = jnp.asarray(dataset_cfg.mean, jnp.float32)
  std = jnp.asarray(dataset_cfg.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def _blend(image, degenerate, factor):
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def color_jitter(key, image, strength: float):
  """torchvision ColorJitter(b, c, s) with b = c = s = strength, in that order."""
  kb, kc, ks = jax.random.split(key, 3)
  factor = lambda k: jax.random.uniform(k, (), minval=1 - strength, maxval=1 + strength)
  image = _blend(image, jnp.zeros_like(image), factor(kb))
  mean = pix.rgb_to_grayscale(image, keep_dims=True).mean()
  image = _blend(image, jnp.full_like(image, mean), factor(kc))
  return _blend(image, grayscale(image), factor(ks))


def blur_kernel_size(image_size: int, max_sigma: float = 2.0) -> int:
  """Odd kernel covering +-3 sigma, no larger than the image."""
  k = 2 * math.ceil(3 * max_sigma) + 1
  return min(k, image_size - 1 if image_size % 2 == 0 else image_size)


def three_augment_one(key, image, *, color_jitter_strength: float, hflip: bool,
                      pick_one: bool = True):
  k_flip, k_choice, k_sigma, k_jitter = jax.random.split(key, 4)
  if hflip:
    image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
  if pick_one:
    choice = jax.random.randint(k_choice, (), 0, 3)
    sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
    ksize = blur_kernel_size(image.shape[0])
    image = jax.lax.switch(choice, [grayscale, solarize, lambda x: blur(x, sigma, ksize)], image)
  if color_jitter_strength:
    image = color_jitter(k_jitter, image, color_jitter_strength)
  return image


def three_augment(key, images, *, color_jitter_strength: float = 0.3, hflip: bool = True,
                  pick_one: bool = True):
  """Flip, one of grayscale/solarize/blur (if pick_one), then color jitter; per image."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: three_augment_one(
      k, x, color_jitter_strength=color_jitter_strength, hflip=hflip, pick_one=pick_one))(
          keys, images)


def cutmix_box(key, lam, height: int, width: int):
  """timm's rand_bbox: a box of side ratio sqrt(1 - lam), centre uniform, clipped."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return y0, y1, x0, x1


def mixup_cutmix(key, images, targets, *, mixup_alpha: float, cutmix_alpha: float,
                 switch_prob: float = 0.5):
  """Mix the batch with its reverse. Returns (images, targets, lam, used_cutmix)."""
  k_switch, k_mix, k_cut, k_box = jax.random.split(key, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(k_switch, switch_prob)
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
  _, h, w, _ = images.shape
  y0, y1, x0, x1 = cutmix_box(k_box, lam_cut, h, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_cut = 1.0 - inside.mean()
  flipped = images[::-1]
  cut = jnp.where(inside[None, :, :, None], flipped, images)
  mixed = lam_mix * images + (1.0 - lam_mix) * flipped
  lam = jnp.where(use_cutmix, lam_cut, lam_mix)
  images = jnp.where(use_cutmix, cut, mixed)
  targets = lam * targets + (1.0 - lam) * targets[::-1]
  return images, targets, lam, use_cutmix


def random_erase_one(key, image, *, prob: float, min_area: float = 0.02,
                     max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10):
  """One rectangle of per-pixel N(0, 1) noise with probability `prob` (timm, mode 'pixel')."""
  h, w, _ = image.shape
  k_apply, k_area, k_aspect, k_y, k_x, k_noise = jax.random.split(key, 6)
  area = jax.random.uniform(k_area, (attempts,), minval=min_area, maxval=max_area) * h * w
  log_r = jax.random.uniform(k_aspect, (attempts,), minval=math.log(min_aspect),
                             maxval=-math.log(min_aspect))
  eh = jnp.round(jnp.sqrt(area * jnp.exp(log_r))).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / jnp.exp(log_r))).astype(jnp.int32)
  fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
  first = jnp.argmax(fits)
  eh, ew = eh[first], ew[first]
  top = jax.random.randint(k_y, (), 0, jnp.maximum(h - eh, 1))
  left = jax.random.randint(k_x, (), 0, jnp.maximum(w - ew, 1))
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  apply = jax.random.bernoulli(k_apply, prob) & fits.any()
  noise = jax.random.normal(k_noise, image.shape, image.dtype)
  return jnp.where(apply & box[:, :, None], noise, image)


def random_erase(key, images, *, prob: float):
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: random_erase_one(k, x, prob=prob))(keys, images)
