"""The CPU crops against torchvision: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3,
bicubic) and RandomCrop(size, padding, padding_mode) on PIL images.

Given torchvision's own draws (our crops take any generator with numpy's `uniform` /
`integers`; here one that draws from torch's generator as torchvision does), the boxes and
the cropped pixels are equal: this pins every bound and formula exactly. With our numpy
generator, by distribution over 20,000 boxes: top, left, h, w, the area fraction and the log
aspect each within a two-sample Kolmogorov-Smirnov distance of 0.02 of get_params' (the 0.1%
critical value is 0.0195; the code measures <= 0.01; a ratio bound off by 10% moves the log
aspect by > 0.1, while the upper scale bound hardly shows: large boxes rarely fit); and the
padded crop's offsets uniform over the (2p + 1)^2 places (every count within 5 standard
deviations of 200), for ours and for RandomCrop alike."""
import math

import ml_collections
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import torch
import torchvision.transforms as T

from vit_jax.data import pipeline

N = 20_000
KS_BOUND = 0.02


class TorchDraws:
  """numpy's Generator.uniform / .integers, drawn from torch's global generator in the
  calls torchvision makes (torch.empty(1).uniform_, torch.randint(..., size=(1,)))."""

  def uniform(self, low, high):
    return torch.empty(1).uniform_(low, high).item()

  def integers(self, low, high, size=None):
    if size is None:
      return torch.randint(low, high, size=(1,)).item()
    return np.array([torch.randint(low, high, size=(1,)).item() for _ in range(size)])


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _dataset(name, size, padding=0, mode='constant'):
  return ml_collections.ConfigDict(dict(name=name, image_size=size, random_crop_padding=padding,
                                        crop_padding_mode=mode))


# (height, width): landscape, portrait, and one so long that most draws miss and the
# centre-crop fallback is taken.
SHAPES = [(48, 80), (90, 40), (10, 160)]


@pytest.mark.parametrize('h,w', SHAPES)
def test_random_resized_crop_box_equals_get_params_given_its_draws(h, w):
  img = Image.fromarray(_image(h, w))
  for seed in range(1500):
    torch.manual_seed(seed)
    want = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
    torch.manual_seed(seed)
    got = pipeline.random_resized_crop_box(TorchDraws(), h, w)
    assert got == tuple(want), (seed, got, want)


def test_random_resized_crop_fallback_is_the_centre_crop():
  """A 10 x 160 image: with 10 misses torchvision takes the centre crop of ratio 4/3."""
  img = Image.fromarray(_image(10, 160))
  seen = set()
  for seed in range(400):
    torch.manual_seed(seed)
    want = tuple(T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]))
    torch.manual_seed(seed)
    assert pipeline.random_resized_crop_box(TorchDraws(), 10, 160) == want
    seen.add(want)
  assert (0, 73, 10, 13) in seen     # the fallback: h 10, w round(10 * 4/3), centred


@pytest.mark.parametrize('h,w', SHAPES[:2])
def test_random_resized_crop_pixels_equal_torchvision(h, w):
  """pipeline.train_crop on an any-size data set is RandomResizedCrop(size, bicubic)."""
  arr = _image(h, w, seed=1)
  crop = T.RandomResizedCrop(24, interpolation=T.InterpolationMode.BICUBIC)
  for seed in range(40):
    torch.manual_seed(seed)
    want = np.asarray(crop(Image.fromarray(arr)))
    torch.manual_seed(seed)
    got = pipeline.train_crop(arr, _dataset('imagenet100', 24), TorchDraws())
    np.testing.assert_array_equal(got, want)


def _features(boxes, h, w):
  return [*boxes.T, boxes[:, 2] * boxes[:, 3] / (h * w), np.log(boxes[:, 3] / boxes[:, 2])]


@pytest.mark.parametrize('h,w', SHAPES)
def test_random_resized_crop_draws_by_distribution(h, w):
  img = Image.fromarray(_image(h, w))
  torch.manual_seed(0)
  want = np.array([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
                   for _ in range(N)])
  rng = np.random.default_rng(0)
  got = np.array([pipeline.random_resized_crop_box(rng, h, w) for _ in range(N)])
  names = ('top', 'left', 'h', 'w', 'area', 'log aspect')
  for name, a, b in zip(names, _features(got, h, w), _features(want, h, w)):
    d = stats.ks_2samp(a, b).statistic
    assert d < KS_BOUND, (name, d)


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_padded_random_crop_equals_torchvision_random_crop(mode):
  arr = _image(32, 28, seed=2)
  crop = T.RandomCrop((32, 28), padding=4, padding_mode=mode)
  for seed in range(60):
    torch.manual_seed(seed)
    want = np.asarray(crop(Image.fromarray(arr)))
    torch.manual_seed(seed)
    got = pipeline.train_crop(arr, _dataset('cifar100', 32, 4, mode), TorchDraws())
    np.testing.assert_array_equal(got, want)


def _offsets(crops, h, w, p):
  """(top, left) of each crop in the padded image, from its centre pixel, whose first two
  channels hold the source row + 1 and column + 1."""
  centre = crops[:, h // 2, w // 2, :2].astype(int) - 1
  return centre[:, 0] - h // 2 + p, centre[:, 1] - w // 2 + p


def test_padded_random_crop_offsets_are_uniform():
  h, w, p = 20, 18, 3
  rows, cols = np.meshgrid(np.arange(h) + 1, np.arange(w) + 1, indexing='ij')
  arr = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
  rng = np.random.default_rng(0)
  n = 200 * (2 * p + 1) ** 2
  ours = np.stack([pipeline.pad_crop(arr, p, 'constant', rng) for _ in range(n)])
  torch.manual_seed(0)
  crop = T.RandomCrop((h, w), padding=p)
  theirs = np.stack([np.asarray(crop(Image.fromarray(arr))) for _ in range(n)])
  for crops in (ours, theirs):
    top, left = _offsets(crops, h, w, p)
    counts = np.bincount(top * (2 * p + 1) + left, minlength=(2 * p + 1) ** 2)
    assert len(counts) == (2 * p + 1) ** 2 and top.min() == 0 and left.max() == 2 * p
    assert np.abs(counts - 200).max() < 5 * math.sqrt(200), counts
