"""grain pipelines: seeded per-epoch shuffling, per-process sharding, batching.

The training iterator is endless (a new shuffle every epoch); its state goes
into the checkpoint, so a resumed run sees exactly the batches it would have.
"""
import dataclasses
import math

import grain
import numpy as np
from PIL import Image

from vit_jax.data import samplers

PADDING_MODES = ('constant', 'reflect')   # dataset.crop_padding_mode (np.pad modes)


@dataclasses.dataclass(frozen=True)
class _Select(grain.transforms.Map):
  """Keep image and label only, as uint8 / int32."""

  def map(self, item):
    return {'image': np.asarray(item['image'], np.uint8),
            'label': np.asarray(item['label'], np.int32)}


@dataclasses.dataclass(frozen=True)
class _PadCrop(grain.transforms.RandomMap):
  """Padded random crop back to the input size (torchvision RandomCrop(size, padding):
  'constant' pads with zeros, its default; 'reflect' mirrors). Flips happen on the device."""
  padding: int
  mode: str = 'constant'

  def random_map(self, item, rng: np.random.Generator):
    img = item['image']
    p = self.padding
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode=self.mode)
    y, x = rng.integers(0, 2 * p + 1, size=2)
    img = padded[y:y + img.shape[0], x:x + img.shape[1]]
    return {'image': np.ascontiguousarray(img), 'label': item['label']}


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                           scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop box (top, left, h, w): 10 tries, then a centre crop."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC), np.uint8)


@dataclasses.dataclass(frozen=True)
class _RandomResizedCrop(grain.transforms.RandomMap):
  size: int

  def random_map(self, item, rng: np.random.Generator):
    img = item['image']
    top, left, h, w = random_resized_crop_box(rng, *img.shape[:2])
    return {'image': _resize(img[top:top + h, left:left + w], self.size, self.size),
            'label': item['label']}


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """DeiT evaluation: shorter side to int(size / crop_fraction) (bicubic), then the central
  size x size (DeiT: 0.875; DeiT-III: --eval-crop-ratio 1.0)."""
  h, w = image.shape[:2]
  short = int(size / crop_fraction)
  nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
  image = _resize(image, nh, nw)
  top, left = (nh - size) // 2, (nw - size) // 2
  return image[top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class _Readable(grain.transforms.Filter):
  """Drops items whose file could not be decoded (the source counts them)."""

  def filter(self, item) -> bool:
    return item['image'] is not None


def train_loader(source, dataset_cfg, per_process_batch: int, seed: int) -> grain.DataLoader:
  ops = []
  if dataset_cfg.name == 'imagenet100':
    ops += [_Readable(), _RandomResizedCrop(dataset_cfg.image_size)]
  ops.append(_Select())
  if dataset_cfg.random_crop_padding:
    ops.append(_PadCrop(dataset_cfg.random_crop_padding, dataset_cfg.crop_padding_mode))
  ops.append(grain.transforms.Batch(per_process_batch, drop_remainder=True))
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if dataset_cfg.repeated_aug > 1:
    sampler = samplers.RepeatedAugSampler(len(source), dataset_cfg.repeated_aug, seed, shard)
  else:
    sampler = samplers.GlobalBatchOrder(
        grain.samplers.IndexSampler(num_records=len(source), shuffle=True, num_epochs=None,
                                    seed=seed),
        per_process_batch, shard)
  return grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                          worker_count=dataset_cfg.workers,
                          read_options=grain.ReadOptions(num_threads=0))


def eval_batches(source, batch_size: int, limit: int | None = None, image_size: int | None = None,
                 crop_ratio: float = 0.875):
  """Fixed-order batches padded to batch_size; 'mask' marks the real examples.

  With `image_size`, every image is centre-cropped to it (ImageFolder data) at
  `crop_ratio`; unreadable images are left out.
  """
  n = len(source) if limit is None else min(limit, len(source))
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(start + batch_size, n))]
    if image_size is not None:
      items = [{'image': center_crop(it['image'], image_size, crop_ratio), 'label': it['label']}
               for it in items if it['image'] is not None]
    if not items:
      continue
    real = len(items)
    images = np.stack([np.asarray(it['image'], np.uint8) for it in items])
    labels = np.array([it['label'] for it in items], np.int32)
    pad = batch_size - real
    yield {'image': np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))),
           'label': np.pad(labels, (0, pad)),
           'mask': np.arange(batch_size) < real}
