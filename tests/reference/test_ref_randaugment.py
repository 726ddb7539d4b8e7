"""RandAugment op by op against the sources' own op functions, at non-zero magnitudes, both
signs, geometric ops included: timm's rand-m9-mstd0.5-inc1 ops (DeiT; bicubic, mean-colour
fill) and torchvision's RandAugment(2, 9) ops (seed 000; nearest, black fill), both on PIL
images. Then the draws: op frequencies, application probability, signs.

Tolerance: pixel ops are exact, but for AutoContrast; resampling ops are exact with
nearest. With bicubic, and in AutoContrast's int(v * scale + offset), PIL computes in
float64 and we in float32 (exactly, for AutoContrast), so where the exact value is an
integer PIL can truncate one lower (AutoContrast: 0.4% of all (lo, hi, v) entries): at
most 1 (of 255) on at most 1% of the pixels."""
import random

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import stats
import pytest
from timm.data import auto_augment as timm_aa
import torchvision.transforms as T
from torchvision.transforms import autoaugment as tv_aa

from vit_jax.data import randaugment as ra

H, W = 30, 26                     # not square: a swapped height and width shows
FILL = (124, 116, 104)            # DeiT's img_mean: round(255 * ImageNet mean)


def _image(seed=0):
  rng = np.random.default_rng(seed)
  smooth = np.linspace(30, 220, H)[:, None, None] + np.linspace(-20, 20, W)[None, :, None]
  img = smooth + rng.normal(0, 25, (H, W, 3))
  return np.clip(img, 20, 230).astype(np.uint8)   # not full range: every op changes it


def _float64_rounding(policy, name):
  return name == 'AutoContrast' or getattr(ra.POLICY[policy].ops[name][0], 'geometric', False)


def _assert_pil_close(got, want, float64_rounding):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  diff = np.abs(got - want)
  if not float64_rounding:
    np.testing.assert_array_equal(got, want)
    return
  assert diff.max() <= 1.0, diff.max()
  assert (diff > 0).mean() <= 0.01, (diff > 0).mean()


def _timm_cases():
  for name in ra.TIMM_OPS:
    for level in (3.0, 9.0, 9.7):
      for sign in (1.0, -1.0):
        yield name, level, sign


@pytest.mark.parametrize('name,level,sign', list(_timm_cases()))
def test_timm_op(monkeypatch, name, level, sign):
  img = _image()
  # timm negates a signed op when random.random() > 0.5: the same draw for both sides.
  monkeypatch.setattr(random, 'random', lambda: 0.9 if sign < 0 else 0.1)
  hparams = dict(img_mean=FILL, interpolation=Image.BICUBIC, translate_pct=0.45)
  level_fn = timm_aa.LEVEL_TO_ARG[name]
  args = level_fn(level, hparams) if level_fn else ()
  want = timm_aa.NAME_TO_OP[name](Image.fromarray(img), *args, fillcolor=FILL,
                                  resample=Image.BICUBIC)
  arg = ra.op_argument('timm', name, level, sign, H, W)
  if args:   # timm's translate argument is a fraction of the size; ours is in pixels
    scale = {'TranslateXRel': W, 'TranslateYRel': H}.get(name, 1)
    np.testing.assert_allclose(float(arg), args[0] * scale, rtol=1e-6, atol=1e-6)
    # The op itself, given the argument PIL receives (a float64 rounded to float32 by us
    # and by PIL alike): where a blend lands on an integer, one ulp of the factor decides.
    arg = np.float32(args[0] * scale)
  got = ra.apply_op('timm', name, jnp.asarray(img, jnp.float32), arg, 'bicubic', FILL)
  _assert_pil_close(got, want, _float64_rounding('timm', name))


def _tv_cases():
  space = T.RandAugment()._augmentation_space(31, (H, W))
  for name in ra.TORCHVISION_OPS:
    # 12 for Posterize: 8 - round(1.6) tells its round from a floor (elsewhere at 12 the
    # shears hit exact half-pixel ties, decided by float64 vs float32 rounding)
    for bin_ in (9, 12, 17, 30) if name == 'Posterize' else (9, 17, 30):
      for sign in ((1.0, -1.0) if space[name][1] else (1.0,)):
        yield name, bin_, sign


@pytest.mark.parametrize('name,bin_,sign', list(_tv_cases()))
def test_torchvision_op(name, bin_, sign):
  img = _image(1)
  magnitudes, _ = T.RandAugment(num_ops=2, magnitude=bin_)._augmentation_space(31, (H, W))[name]
  magnitude = float(magnitudes[bin_]) if magnitudes.ndim > 0 else 0.0
  want = tv_aa._apply_op(Image.fromarray(img), name, sign * magnitude,
                         interpolation=T.InterpolationMode.NEAREST, fill=None)
  arg = ra.op_argument('torchvision', name, bin_, sign, H, W)
  if magnitudes.ndim > 0:
    want_arg = {'TranslateX': -int(sign * magnitude), 'TranslateY': -int(sign * magnitude),
                'Brightness': 1 + sign * magnitude, 'Color': 1 + sign * magnitude,
                'Contrast': 1 + sign * magnitude, 'Sharpness': 1 + sign * magnitude}.get(
                    name, sign * magnitude)
    np.testing.assert_allclose(float(arg), want_arg, rtol=1e-6, atol=1e-6)
    arg = np.float32(want_arg)
  got = ra.apply_op('torchvision', name, jnp.asarray(img, jnp.float32), arg, 'nearest',
                    ra.fill_colour('torchvision', (0.5,) * 3))
  # nearest: no float64 rounding in the resampling ops
  _assert_pil_close(got, want, name == 'AutoContrast')


def _classify(outputs, candidates):
  """Index of the candidate each output equals exactly (-1: none)."""
  out = []
  for o in outputs:
    hits = [i for i, c in enumerate(candidates) if np.array_equal(o, c)]
    out.append(hits[0] if hits else -1)
  return np.array(out)


def test_torchvision_draws_every_op_uniformly_and_always_applies_it():
  img = _image(2)
  x = jnp.asarray(img, jnp.float32)
  n = 2800
  outs = np.asarray(jax.jit(lambda k: ra.rand_augment(
      k, jnp.broadcast_to(x, (n, H, W, 3)), policy='torchvision', num_layers=1, magnitude=9,
      magnitude_std=0.0, resample='nearest', fill=(0, 0, 0)))(jax.random.key(0)))
  names = list(ra.TORCHVISION_OPS)
  candidates, labels = [], []
  for name in names:
    for sign in (1.0, -1.0):
      arg = ra.op_argument('torchvision', name, 9, sign, H, W)
      candidates.append(np.asarray(ra.apply_op('torchvision', name, x, arg, 'nearest',
                                                (0, 0, 0))))
      labels.append((name, sign))
  which = _classify(outs, candidates)
  assert (which >= 0).all()                        # every output is one op's, applied
  counts = np.bincount([names.index(labels[i][0]) for i in which], minlength=len(names))
  # Uniform over 14 ops: 200 each; 4 binomial standard deviations is ~53.
  assert np.abs(counts - n / 14).max() < 60, counts
  signed = [i for i in which if labels[i][0] not in ('Identity', 'Posterize', 'Solarize',
                                                     'AutoContrast', 'Equalize')]
  negative = np.mean([labels[i][1] < 0 for i in signed])
  assert abs(negative - 0.5) < 0.04                 # signs: 1/2 each


def test_timm_applies_each_drawn_op_with_probability_one_half():
  img = _image(3)
  x = jnp.asarray(img, jnp.float32)
  n = 3000
  outs = np.asarray(jax.jit(lambda k: ra.rand_augment(
      k, jnp.broadcast_to(x, (n, H, W, 3)), policy='timm', num_layers=1, magnitude=9.0,
      magnitude_std=0.5, resample='bicubic', fill=FILL))(jax.random.key(1)))
  unchanged = np.all(outs == img, axis=(1, 2, 3))
  assert abs(unchanged.mean() - 0.5) < 0.03         # every op changes this image
  # The level-free ops are recognisable: each is drawn 1/15 of the time, applied half of it.
  fixed = [np.asarray(ra.apply_op('timm', name, x, None, 'bicubic', FILL))
           for name in ('AutoContrast', 'Equalize', 'Invert')]
  which = _classify(outs, fixed)
  for i in range(3):
    assert abs((which == i).mean() - 1 / 30) < 0.012, (i, (which == i).mean())


# --- timm's magnitude noise (mstd) ------------------------------------------------------------

@pytest.mark.parametrize('magnitude,std', [(9.0, 0.5), (9.0, 2.0), (1.0, 2.0)])
def test_timm_level_noise_equals_augment_ops(monkeypatch, magnitude, std):
  """timm's AugmentOp: applied w.p. 1/2, level ~ N(M, mstd) (random.gauss) clipped to
  [0, 10], sign negated w.p. 1/2 (_randomly_negate). One op, BrightnessIncreasing (factor
  1 +- 0.09 level), on a flat grey 120 image, read off one pixel: 6,000 draws of ours
  (through augment.pil_stage with config.augment's fields) against 6,000 of timm's AugmentOp,
  within a two-sample KS distance of 0.04 (0.1% critical value 0.036). (9, 0.5) is DeiT's
  rand-m9-mstd0.5; the std of 2 reaches the clip at 10 and, around 1, the one at 0."""
  from vit_jax import config_lib
  from vit_jax.data import augment
  name, n = 'BrightnessIncreasing', 6000
  monkeypatch.setitem(ra.POLICY, 'timm', ra.Policy({name: ra.TIMM_OPS[name]}, 0.5, True))
  c = config_lib.base()
  c.augment.update(randaugment_layers=1, randaugment_policy='timm',
                   randaugment_magnitude=magnitude, randaugment_mstd=std)
  grey = jnp.full((n, 4, 4, 3), 120.0)
  ours = np.asarray(jax.jit(lambda k: augment.pil_stage(k, grey, c.augment))(
      jax.random.key(0)))[:, 0, 0, 0]
  op = timm_aa.AugmentOp(name, prob=0.5, magnitude=magnitude, hparams={'magnitude_std': std})
  random.seed(0)
  img = Image.new('RGB', (4, 4), (120, 120, 120))
  theirs = np.array([np.asarray(op(img))[0, 0, 0] for _ in range(n)], np.float32)
  assert stats.ks_2samp(ours, theirs).statistic < 0.04
  assert np.std(theirs[theirs > 120]) > 1.0     # the noise shows in the pixel


@pytest.mark.parametrize('name', ['Solarize', 'Posterize'])
@pytest.mark.parametrize('bin_', [20, 30])
def test_torchvision_bins_above_ten_reach_the_op(monkeypatch, name, bin_):
  """rand_augment's torchvision policy passes its bin (0-30, no noise, no clip at timm's
  10) to the op: with only `name` to draw, every image equals torchvision's op at that bin
  (pixel ops, exact)."""
  monkeypatch.setitem(ra.POLICY, 'torchvision', ra.Policy(
      {name: ra.TORCHVISION_OPS[name]}, 1.0, ra.POLICY['torchvision'].random_level))
  img = _image(3)
  outs = np.asarray(jax.jit(lambda k: ra.rand_augment(
      k, jnp.broadcast_to(jnp.asarray(img, jnp.float32), (8, H, W, 3)), policy='torchvision',
      num_layers=1, magnitude=bin_, magnitude_std=0.0, resample='nearest', fill=(0, 0, 0)))(
          jax.random.key(0)))
  magnitudes, _ = T.RandAugment()._augmentation_space(31, (H, W))[name]
  want = np.asarray(tv_aa._apply_op(Image.fromarray(img), name, float(magnitudes[bin_]),
                                    interpolation=T.InterpolationMode.NEAREST, fill=None))
  for out in outs:
    np.testing.assert_array_equal(out, want)


def test_timm_fill_colour_is_deits():
  """DeiT builds RandAugment with timm's create_transform, whose ops fill with
  img_mean = round(255 x mean), capped at 255."""
  from timm.data import create_transform
  mean = (0.485, 0.456, 0.406)
  t = create_transform(input_size=32, is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
                       interpolation='bicubic', mean=mean, std=(0.229, 0.224, 0.225))
  (rand,) = [x for x in t.transforms if isinstance(x, timm_aa.RandAugment)]
  assert ra.fill_colour('timm', mean) == rand.ops[0].kwargs['fillcolor'] == FILL
  assert ra.fill_colour('timm', (0.5, 0.999, 0.0)) == (128, 255, 0)
  assert ra.fill_colour('torchvision', mean) == (0, 0, 0)
