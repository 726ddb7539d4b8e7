"""The input pipelines: the training stream (grain) and the evaluation batches.

Training batch `step` is a function of (seed, step) alone: samplers.BatchOrder says
which records it holds and each record's random crop comes from a generator seeded by
(seed, step, its row in the global batch). So the data order does not depend on the
number of processes or loader workers, and resuming at the train state's step is exact
with any of them: no iterator state is needed. Each grain element is one process's
whole batch, so worker processes build whole batches and keep their order.

The CPU side decodes and crops; everything else happens on the device (augment.py).
"""
import math

import grain
import jax
import numpy as np
from PIL import Image

from vit_jax.data import samplers
from vit_jax.data import sources

EVAL_INTERPOLATION = 'bicubic'             # center_crop's resize, as timm's configs name it


def pad_crop(image: np.ndarray, padding: int, mode: str, rng: np.random.Generator):
  """torchvision RandomCrop(size, padding): pad ('constant': zeros, its default; 'reflect'
  mirrors), then a uniformly placed crop of the original size."""
  p = padding
  padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode=mode)
  y, x = rng.integers(0, 2 * p + 1, size=2)
  return padded[y:y + image.shape[0], x:x + image.shape[1]]


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


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """DeiT evaluation: shorter side to int(size / crop_fraction) (bicubic), then the central
  size x size (DeiT: 0.875; DeiT-III: --eval-crop-ratio 1.0). As torchvision's Resize(int)
  and CenterCrop: the longer side is truncated (int(short * long / shorter)), the offset
  rounded half to even (int(round((side - size) / 2)))."""
  h, w = image.shape[:2]
  short = int(size / crop_fraction)
  nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
  image = _resize(image, nh, nw)
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return image[top:top + size, left:left + size]


def train_crop(image: np.ndarray, dataset_cfg, rng: np.random.Generator) -> np.ndarray:
  """The CPU transforms of one training record: an image of any size (sources.DATASETS) gets
  a RandomResizedCrop (bicubic) to dataset.image_size, then the padded random crop if
  dataset.random_crop_padding."""
  if sources.lookup(dataset_cfg.name).any_size:
    top, left, h, w = random_resized_crop_box(rng, *image.shape[:2])
    image = _resize(image[top:top + h, left:left + w], dataset_cfg.image_size,
                    dataset_cfg.image_size)
  if dataset_cfg.random_crop_padding:
    image = pad_crop(image, dataset_cfg.random_crop_padding, dataset_cfg.crop_padding_mode, rng)
  return np.ascontiguousarray(image, np.uint8)


class TrainStream:
  """This process's training batches, from any step on.

  An unreadable image (a folder file that does not decode) is replaced by the next
  readable image of its batch, so batches keep their size; its path comes back in the
  batch's 'unreadable' field for the trainer to report.
  """

  def __init__(self, source, dataset_cfg, global_batch: int, seed: int,
               process_index: int | None = None, process_count: int | None = None):
    self.source, self.dataset_cfg, self.seed = source, dataset_cfg, seed
    self.order = samplers.BatchOrder(len(source), global_batch, seed, dataset_cfg.repeated_aug)
    self.rows = self.order.process_rows(
        jax.process_index() if process_index is None else process_index,
        jax.process_count() if process_count is None else process_count)

  @property
  def steps_per_epoch(self) -> int:
    return self.order.steps_per_epoch

  def load(self, step: int) -> dict:
    """This process's rows of global batch `step`."""
    keys = self.order.global_keys(step)[self.rows]
    items = [self.source[int(k)] for k in keys]
    readable = [i for i, it in enumerate(items) if it['image'] is not None]
    unreadable = tuple(it['unreadable'] for it in items if it['image'] is None)
    if not readable:
      raise OSError(f'every image of training batch {step} is unreadable, e.g. {unreadable[0]}')
    images, labels = [], []
    for i, row in enumerate(self.rows):
      j = i if items[i]['image'] is not None else next(
          (r for r in readable if r > i), readable[0])
      rng = np.random.default_rng([self.seed, step, int(row)])
      images.append(train_crop(np.asarray(items[j]['image'], np.uint8), self.dataset_cfg, rng))
      labels.append(items[j]['label'])
    return {'image': np.stack(images), 'label': np.asarray(labels, np.int32),
            'unreadable': unreadable}

  def batches(self, start_step: int, workers: int = 0):
    """An endless iterator of batches from `start_step` on (`workers` grain processes)."""
    ds = grain.MapDataset.range(start_step, start_step + 2**40).map(self.load)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if workers:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)


def eval_preprocessing(dataset_cfg) -> dict:
  """The evaluation's preprocessing in timm's pretrained_cfg terms (mean, std, crop_pct,
  interpolation). Images of any size are resized and centre-cropped at eval_crop_ratio; the
  others come at image_size and are used as they are, which crop_pct 1.0 keeps so in timm's
  transform (a resize to the size an image has is none)."""
  crop = dataset_cfg.eval_crop_ratio if sources.eval_crop(dataset_cfg) else 1.0
  return dict(mean=tuple(dataset_cfg.mean), std=tuple(dataset_cfg.std), crop_pct=float(crop),
              interpolation=EVAL_INTERPOLATION)


def eval_batches(source, batch_size: int, limit: int | None = None, image_size: int | None = None,
                 crop_ratio: float = 0.875):
  """Fixed-order batches padded to batch_size; 'mask' marks the real examples.

  With `image_size`, every image is centre-cropped to it (ImageFolder data) at
  `crop_ratio`; unreadable images are left out, their paths in 'unreadable'.
  """
  n = len(source) if limit is None else min(limit, len(source))
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(start + batch_size, n))]
    unreadable = tuple(it['unreadable'] for it in items if it['image'] is None)
    items = [it for it in items if it['image'] is not None]
    if image_size is not None:
      items = [{'image': center_crop(it['image'], image_size, crop_ratio), 'label': it['label']}
               for it in items]
    real = len(items)
    if real:
      images = np.stack([np.asarray(it['image'], np.uint8) for it in items])
    elif image_size is not None:   # a batch of unreadable files only: all padding
      images = np.zeros((0, image_size, image_size, 3), np.uint8)
    else:
      continue
    labels = np.array([it['label'] for it in items], np.int32)
    pad = batch_size - real
    yield {'image': np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))),
           'label': np.pad(labels, (0, pad)),
           'mask': np.arange(batch_size) < real, 'unreadable': unreadable}


def probe_batch(source, n: int, image_size: int | None = None,
                crop_ratio: float = 0.875) -> dict:
  """The probe images: the first n readable images of `source`, in order, cropped as the
  evaluation crops them (the batch training measures every epoch and the analysis studies).
  {'image', 'label', 'unreadable'}; fewer than n images only where the source has fewer."""
  images, labels, unreadable = [], [], ()
  for batch in eval_batches(source, n, image_size=image_size, crop_ratio=crop_ratio):
    images += list(batch['image'][batch['mask']])
    labels += list(batch['label'][batch['mask']])
    unreadable += batch['unreadable']
    if len(images) >= n:
      break
  if not images:
    raise ValueError(f'{source!r} holds no readable image for the probe batch')
  return {'image': np.stack(images[:n]), 'label': np.asarray(labels[:n], np.int32),
          'unreadable': unreadable}


def report_unreadable(where: str, what: str, paths) -> None:
  """One line per run of a loop naming each unreadable file once (this process's share)."""
  paths = sorted(set(paths))
  if paths:
    who = f'process {jax.process_index()}: ' if jax.process_count() > 1 else ''
    print(f'{who}{where}: {what} {len(paths)} unreadable image(s): ' + '; '.join(paths),
          flush=True)
