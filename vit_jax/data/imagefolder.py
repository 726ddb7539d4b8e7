"""ImageNet-style folders: <root>/<split>/<class>/<image>, decoded with PIL.

Every image is converted to RGB (grayscale, palette, CMYK and RGBA files
included). A file that cannot be decoded is skipped, counted, and reported by
the trainer at the end of the epoch; it never stops a run.
"""
import os
import threading

from absl import logging
import numpy as np
from PIL import Image

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


class UnreadableImages:
  """Thread-safe count of the files skipped in this process."""

  def __init__(self):
    self._lock = threading.Lock()
    self.paths: list[str] = []

  def add(self, path: str):
    with self._lock:
      self.paths.append(path)

  def take(self) -> list[str]:
    with self._lock:
      paths, self.paths = self.paths, []
    return paths


UNREADABLE = UnreadableImages()


def list_classes(root: str, split: str) -> list[str]:
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'dataset.data_dir={root!r} has no {split}/ folder; expected '
                            f'{split}/<class>/<image> (prepare it with python -m '
                            f'vit_jax.data.prepare_imagenet100)')
  classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
  if not classes:
    raise FileNotFoundError(f'{folder!r} has no class folders')
  return classes


def check_tree(root: str) -> list[str]:
  """Classes of train/, which val/ must match exactly; one-line errors otherwise."""
  train, val = list_classes(root, 'train'), list_classes(root, 'val')
  if train != val:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    raise ValueError(f'train/ and val/ class folders in {root!r} differ: only in train '
                     f'{only_train[:5]}, only in val {only_val[:5]}')
  return train


class ImageFolderSource:
  """Random access over (path, label); items are full decoded RGB images of any size."""

  def __init__(self, root: str, split: str):
    self.classes = check_tree(root)
    self.root, self.split = root, split
    samples = []
    for label, cls in enumerate(self.classes):
      folder = os.path.join(root, split, cls)
      for name in sorted(os.listdir(folder)):
        if name.lower().endswith(EXTENSIONS):
          samples.append((os.path.join(folder, name), label))
    if not samples:
      raise FileNotFoundError(f'{os.path.join(root, split)!r} has no images ({EXTENSIONS})')
    self.samples = samples
    self.labels = np.array([l for _, l in samples], np.int32)

  def __len__(self):
    return len(self.samples)

  def __repr__(self):  # grain compares this with the checkpointed iterator state
    return f'ImageFolderSource({self.root!r}, {self.split}, {len(self)} images)'

  def __getitem__(self, i):
    path, label = self.samples[i]
    try:
      with Image.open(path) as img:
        image = np.asarray(img.convert('RGB'), np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      logging.warning('skipping unreadable image %s: %s', path, e)
      UNREADABLE.add(path)
      image = None
    return {'image': image, 'label': np.int32(label)}
