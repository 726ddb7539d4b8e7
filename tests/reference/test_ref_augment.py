"""The augmentations against the sources' own code on identical images and draws:
DeiT-III's 3-Augment pieces (torchvision Grayscale(3), ImageOps.solarize, PIL's
GaussianBlur) and torchvision's ColorJitter on PIL images, exact; timm's Mixup given the
same lambda and box, within 1e-6; timm's RandomErasing, whose draws come from Python's
`random` and cannot be shared, by the distribution of what it erases."""
import math
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter, ImageOps
import pytest
from scipy import stats
import torch
import torchvision.transforms as T
from timm.data import Mixup
from timm.data import mixup as timm_mixup
from timm.data.random_erasing import RandomErasing

from conftest import REPO
import mix_shards
from vit_jax import config_lib
from vit_jax.data import augment
from vit_jax.data import pil_ops
from vit_jax.train import losses

H, W = 30, 26


def _image(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _ours(fn, img, *args):
  return np.asarray(fn(jnp.asarray(img, jnp.float32), *args))


# --- 3-Augment (DeiT-III augment.py) ----------------------------------------------------

def test_three_augment_pieces_equal_deit3s():
  img = _image()
  pil = Image.fromarray(img)
  np.testing.assert_array_equal(_ours(pil_ops.grayscale, img), np.asarray(T.Grayscale(3)(pil)))
  np.testing.assert_array_equal(_ours(lambda x: pil_ops.solarize(x, 128), img),
                                np.asarray(ImageOps.solarize(pil)))
  for sigma in (0.1, 0.37, 0.9, 1.45, 2.0):     # DeiT-III: radius ~ U(0.1, 2)
    s = float(np.float32(sigma))
    np.testing.assert_array_equal(
        _ours(lambda x: pil_ops.gaussian_blur(x, s), img),
        np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=s))), err_msg=f'sigma {s}')


def test_three_augment_picks_each_of_the_three_a_third_of_the_time():
  img = _image(1)
  n = 3000
  out = np.asarray(jax.jit(jax.vmap(augment.three_augment_one))(
      jax.random.split(jax.random.key(0), n), jnp.broadcast_to(jnp.asarray(img, jnp.float32),
                                                                (n, H, W, 3))))
  gray = _ours(pil_ops.grayscale, img)
  solar = _ours(lambda x: pil_ops.solarize(x, 128), img)
  is_gray = np.all(out == gray, axis=(1, 2, 3))
  is_solar = np.all(out == solar, axis=(1, 2, 3))
  blurred = ~is_gray & ~is_solar
  # every other output is a blur of the image, at some sigma in [0.1, 2]
  assert np.all(np.abs(out[blurred].astype(np.float32) - img).mean(axis=(1, 2, 3)) > 0)
  for share in (is_gray.mean(), is_solar.mean(), blurred.mean()):
    assert abs(share - 1 / 3) < 0.03      # 3.5 binomial standard deviations at n = 3000


# --- ColorJitter (torchvision, on PIL images) ---------------------------------------------

@pytest.mark.parametrize('seed', range(6))
def test_color_jitter_equals_torchvision_given_the_same_draws(seed):
  img = _image(seed)
  cj = T.ColorJitter(0.3, 0.3, 0.3)
  torch.manual_seed(seed)
  fn_idx, b, c, s, _ = T.ColorJitter.get_params(cj.brightness, cj.contrast, cj.saturation,
                                                cj.hue)
  torch.manual_seed(seed)
  want = np.asarray(cj(Image.fromarray(img)))
  order = jnp.asarray([i for i in fn_idx.tolist() if i < 3])      # hue (3) is off
  got = _ours(lambda x: augment.color_jitter_apply(x, order, jnp.asarray([b, c, s],
                                                                        jnp.float32)), img)
  np.testing.assert_array_equal(got, want)


def test_color_jitter_draws_every_order_and_factors_in_range():
  order, factors = jax.vmap(lambda k: augment.color_jitter_draws(k, 0.3))(
      jax.random.split(jax.random.key(0), 6000))
  codes = np.asarray(order) @ np.array([9, 3, 1])
  counts = np.bincount(codes, minlength=27)[[5, 7, 11, 15, 19, 21]]   # the 6 permutations
  assert counts.sum() == 6000 and np.abs(counts - 1000).max() < 120
  f = np.asarray(factors)
  assert f.min() >= 0.7 and f.max() <= 1.3 and abs(f.mean() - 1.0) < 0.01


# --- mixup / cutmix (timm Mixup) ---------------------------------------------------------

def _batch(b=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, H, W, 3)).astype(np.float32)
  labels = np.array([0, 3, 3, 7, 9, 1])[:b]
  return x, labels


@pytest.mark.parametrize('seed', range(8))
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_mixup_cutmix_equal_timm_given_the_same_draws(monkeypatch, seed, smoothing):
  x, labels = _batch()
  mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode='batch',
                label_smoothing=smoothing, num_classes=10)
  centres = []
  randint = np.random.randint

  def recording_randint(*args, **kwargs):   # timm's box centre draws, kept for our side
    value = randint(*args, **kwargs)
    centres.append(int(value))
    return value
  monkeypatch.setattr(np.random, 'randint', recording_randint)
  np.random.seed(seed)
  lam, use_cutmix = mixer._params_per_batch()
  np.random.seed(seed)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  xt, target = mixer(xt, torch.tensor(labels))
  want_x, want_t = xt.numpy().transpose(0, 2, 3, 1), target.numpy()

  if use_cutmix:
    box = augment.cutmix_box(jnp.float32(lam), centres[0], centres[1], H, W, 'exact')
  else:
    box = (0, 0, 0, 0)
  targets = losses.smooth_labels(jax.nn.one_hot(labels, 10), smoothing)
  got_x, got_t, got_lam = augment.mix_apply(jnp.asarray(x), targets, jnp.asarray(use_cutmix),
                                            jnp.float32(lam), box)
  np.testing.assert_allclose(np.asarray(got_x), want_x, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_t), want_t, atol=1e-6)


@pytest.fixture(scope='module')
def four_device_mixing(tmp_path_factory):
  """tests/mix_shards.py's output: the train step's mixing, jitted over 4 forced CPU devices."""
  out = tmp_path_factory.mktemp('mix_shards') / 'mix.npz'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'mix_shards.py'), str(out)],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


def test_each_shard_mixes_by_itself_as_timm_mixup_on_each_process(monkeypatch,
                                                                   four_device_mixing):
  """DeiT on 4 processes: each one's Mixup (numpy seeded seed + rank) mixes its own batch
  with its own lambda and box. Ours with augment.mix_groups=4, inside jit over 4 devices:
  every shard equals timm's Mixup applied to that shard alone, given that group's draws
  (DeiT's recipe: mixup 0.8, cutmix 1.0, smoothing 0.1); and no image or target row
  crosses a device, where one Mixup over the whole batch (mix_groups=1) moves them."""
  r = four_device_mixing
  c = mix_shards.mixing_config(4)
  n = mix_shards.BATCH // 4
  used_cutmix = []
  for i in range(mix_shards.KEYS):
    k_mix = jax.random.split(jax.random.key(i), 3)[2]      # augment_batch's mixing key
    use, lam, box = jax.vmap(lambda k: augment.mix_draws(
        k, mix_shards.H, mix_shards.W, mixup_alpha=c.augment.mixup, cutmix_alpha=c.augment.cutmix,
        switch_prob=c.augment.mix_switch_prob, box=c.augment.cutmix_box))(
            augment.group_keys(k_mix, 4))
    assert len(set(np.asarray(lam).tolist())) == 4          # a draw of its own per shard
    for g in range(4):
      rows = slice(g * n, (g + 1) * n)
      mixer = Mixup(mixup_alpha=c.augment.mixup, cutmix_alpha=c.augment.cutmix,
                    switch_prob=c.augment.mix_switch_prob, mode='batch',
                    label_smoothing=c.loss.label_smoothing, num_classes=mix_shards.CLASSES)
      monkeypatch.setattr(mixer, '_params_per_batch',
                          lambda g=g: (float(lam[g]), bool(use[g])))
      monkeypatch.setattr(timm_mixup, 'rand_bbox',
                          lambda *a, g=g, **k: tuple(int(b[g]) for b in box))
      x = torch.from_numpy(r['images'][i, rows].transpose(0, 3, 1, 2) / np.float32(255))
      want_x, want_t = mixer(x, torch.from_numpy(r['labels'][i, rows]).long())
      np.testing.assert_allclose(r['mixed'][i, rows], want_x.numpy().transpose(0, 2, 3, 1),
                                 atol=1e-6, err_msg=f'key {i}, shard {g}')
      np.testing.assert_allclose(r['targets'][i, rows], want_t.numpy(), atol=1e-6,
                                 err_msg=f'key {i}, shard {g}')
      used_cutmix.append(bool(use[g]))
  assert 0 < sum(used_cutmix) < len(used_cutmix)            # both mixup and cutmix were drawn
  assert r['per_shard_collectives'].size == 0, r['per_shard_collectives']
  assert any(op.startswith('collective-permute') for op in r['whole_batch_collectives'])


def test_mixing_groups_train_alike_on_one_and_four_devices(four_device_mixing):
  """The groups are rows of the global batch, not devices: with mixing on and each of
  mix_groups=2 groups spread over two of the 4 shards, 3 train steps on 4 devices equal
  those on 1 (so a resume on another device count mixes as the run it continues)."""
  assert four_device_mixing['step_loss_diff'] <= 1e-5
  assert four_device_mixing['step_param_diff'] < 1e-5


def test_cutmix_box_equals_timm_rand_bbox(monkeypatch):
  """'exact' is timm's rand_bbox; 'floor', timm 0.3-0.4's (cut // 2 on both sides)."""
  for seed in range(200):
    rng = np.random.default_rng(seed)
    lam = float(rng.uniform(0, 1))
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    draws = iter([cy, cx])
    monkeypatch.setattr(np.random, 'randint', lambda *a, **k: next(draws))
    want = timm_mixup.rand_bbox((H, W), lam)
    got = augment.cutmix_box(jnp.float32(lam), cy, cx, H, W, 'exact')
    assert tuple(int(v) for v in got) == tuple(int(v) for v in want)
    cut_h, cut_w = int(H * np.sqrt(1 - np.float32(lam))), int(W * np.sqrt(1 - np.float32(lam)))
    floor = augment.cutmix_box(jnp.float32(lam), cy, cx, H, W, 'floor')
    assert tuple(int(v) for v in floor) == (
        max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H), max(cx - cut_w // 2, 0),
        min(cx + cut_w // 2, W))


# --- random erasing (timm RandomErasing, mode 'pixel') ---------------------------------------

def _boxes(erased):
  """(applied, top, left, h, w) of the one rectangle changed in each (H, W) mask."""
  out = []
  for mask in erased:
    if not mask.any():
      out.append((0, -1, -1, 0, 0))
      continue
    rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert (mask == box).all()                    # one axis-aligned rectangle
    out.append((1, rows.min(), cols.min(), rows.max() - rows.min() + 1,
                cols.max() - cols.min() + 1))
  return np.array(out)


def _total_variation(a, b):
  values = np.union1d(a, b)
  pa = np.array([(a == v).mean() for v in values])
  pb = np.array([(b == v).mean() for v in values])
  return 0.5 * np.abs(pa - pb).sum()


def test_random_erasing_draws_what_timm_draws():
  """20,000 erasures each on a 10 x 12 image, where the box often nearly fills it: the
  applied share within 0.015, and the distributions of top, left, height and width each
  within 0.04 total variation (an exclusive upper bound for top, as before this was
  fixed, moves it by ~0.1; noise alone gives ~0.01)."""
  h, w, n = 10, 12, 20_000
  random.seed(0)
  torch.manual_seed(0)
  eraser = RandomErasing(probability=0.5, mode='pixel', device='cpu')
  theirs = []
  for _ in range(n):
    img = torch.zeros(3, h, w)
    eraser(img)
    theirs.append((img != 0).any(0).numpy())
  theirs = _boxes(np.stack(theirs))
  ours = np.asarray(augment.random_erase(jax.random.key(0), jnp.zeros((n, h, w, 3)), prob=0.5))
  ours = _boxes(np.any(ours != 0, axis=-1))
  assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.015
  hit_o, hit_t = ours[ours[:, 0] == 1], theirs[theirs[:, 0] == 1]
  for col in (1, 2, 3, 4):
    assert _total_variation(hit_o[:, col], hit_t[:, col]) < 0.04, col
  # The boxes reach the last row and column, as timm's randint(0, H - h) inclusive does.
  assert (hit_o[:, 1] + hit_o[:, 3] == h).any() and (hit_o[:, 2] + hit_o[:, 4] == w).any()


def test_erasing_comes_before_mixing():
  """DeiT erases each image in its loader, then Mixup blends the batch: image 0 and its
  partner B-1 then show both rectangles, the same changed pixels."""
  c = config_lib.load('deit_distill')
  c.augment.update(hflip=False, randaugment_layers=0, mixup=0.8, cutmix=0.0, erase_prob=1.0)
  c.dataset.update(mean=(0.0,) * 3, std=(1.0,) * 3)
  images = jnp.full((8, 24, 24, 3), 128, jnp.uint8)
  x, _ = augment.augment_batch(jax.random.key(3), images, jax.nn.one_hot(jnp.arange(8), 10), c)
  changed = np.asarray(jnp.any(x != 128 / 255, axis=-1))
  assert changed[0].any() and (changed[0] == changed[-1]).all()
  assert changed[0].sum() > changed[0].any(1).sum()    # more than a single column


# --- horizontal flip (DeiT / DeiT-III: transforms.RandomHorizontalFlip() on PIL) --------------

def test_hflip_is_torchvisions_horizontal_flip_on_half_of_the_images():
  """augment_batch with only config.augment.hflip on: every image comes out as the
  normalised original or the normalised torchvision hflip of it (a non-square image with
  no symmetry, so a vertical flip or a transpose would match neither), each image drawn on
  its own, flipped with probability 1/2: 2,000 images, within 4 binomial sd (0.045)."""
  c = config_lib.base()
  c.augment.hflip = True
  n, rng = 2000, np.random.default_rng(0)
  images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
  out = np.asarray(jax.jit(lambda k, x: augment.augment_batch(k, x, jnp.zeros((n, 2)), c)[0])(
      jax.random.key(0), jnp.asarray(images)))
  normalize = T.Compose([T.ToTensor(), T.Normalize(c.dataset.mean, c.dataset.std)])
  flipped = []
  for img, got in zip(images, out):
    pil = Image.fromarray(img)
    same = np.allclose(got, normalize(pil).numpy().transpose(1, 2, 0), atol=1e-5)
    mirrored = np.allclose(got, normalize(T.RandomHorizontalFlip(p=1.0)(pil)).numpy().transpose(
        1, 2, 0), atol=1e-5)
    assert same != mirrored
    flipped.append(mirrored)
  assert abs(np.mean(flipped) - 0.5) < 0.045, np.mean(flipped)


def test_random_erasing_box_equals_timms_given_the_same_draws(monkeypatch):
  """Both sides' draws replaced by the same plan: the first attempt is exactly as tall as
  the 10 x 12 image (area 100/360, aspect 3), which timm's strict fit test (h < H, w < W)
  passes over; the second fits and is placed at the last row and column that timm's
  inclusive randint(0, H - h) allows. Our box is the one timm erases (mode 'const' on ones),
  and we ask for the same ranges: the area and log aspect bounds, and the placements."""
  h, w = 10, 12
  areas, log_aspects = [100 / 360, 0.1] + [0.2] * 8, [math.log(3.0), 0.0] + [0.0] * 8
  placements = [7, 9]
  asked = {'ours': [], 'timm': []}

  def planned(values, side):
    """A draw that hands out `values` in turn and records the arguments it was given."""
    it = iter(values)

    def draw(*args, **kwargs):
      asked[side].append(tuple(float(a) for a in (args + tuple(kwargs.values()))[-2:]))
      return next(it)
    return draw

  monkeypatch.setattr(random, 'random', lambda: 0.0)                 # timm: apply
  monkeypatch.setattr(random, 'uniform', planned(
      [v for pair in zip(areas, log_aspects) for v in pair], 'timm'))
  monkeypatch.setattr(random, 'randint', planned(placements, 'timm'))
  img = torch.ones(3, h, w)
  RandomErasing(probability=1.0, mode='const', device='cpu')._erase(img, 3, h, w, img.dtype)
  (want,) = _boxes((img == 0).all(0).numpy()[None])

  monkeypatch.setattr(jax.random, 'bernoulli', lambda key, p: jnp.asarray(True))
  monkeypatch.setattr(jax.random, 'uniform', planned(
      [jnp.asarray(areas, jnp.float32), jnp.asarray(log_aspects, jnp.float32)], 'ours'))
  monkeypatch.setattr(jax.random, 'randint', planned(
      [jnp.asarray(p, jnp.int32) for p in placements], 'ours'))
  got = augment.erase_draws(jax.random.key(0), h, w, prob=0.25)
  assert tuple(int(v) for v in got) == tuple(int(v) for v in want) == (1, 7, 9, 3, 3)
  theirs, ours = asked['timm'], asked['ours']
  np.testing.assert_allclose(ours[:2], theirs[:2], rtol=1e-6)      # area and aspect ranges
  assert [(lo, hi - 1) for lo, hi in ours[2:]] == theirs[-2:]       # exclusive vs inclusive


def test_cutmix_box_is_placed_as_timms_rand_bbox(monkeypatch):
  """mix_draws' box with lambda fixed at 0.64 (its Beta draw replaced; cut 0.6 of each
  side), 4,000 keys, against timm's rand_bbox((H, W), 0.64) over 4,000 numpy draws: y0,
  y1, x0, x1 each within a two-sample KS distance of 0.06 (0.1% critical value 0.043) on
  this 30 x 26 image, where a centre drawn over the wrong side moves one by > 0.1."""
  n = 4000
  monkeypatch.setattr(jax.random, 'beta', lambda key, a, b: jnp.float32(0.64))
  ours = jax.vmap(lambda k: augment.mix_draws(k, H, W, mixup_alpha=0.0, cutmix_alpha=1.0)[2])(
      jax.random.split(jax.random.key(0), n))
  np.random.seed(0)
  theirs = timm_mixup.rand_bbox((H, W), 0.64, count=n)
  for name, a, b in zip(('y0', 'y1', 'x0', 'x1'), ours, theirs):
    assert stats.ks_2samp(np.asarray(a), b).statistic < 0.06, name
