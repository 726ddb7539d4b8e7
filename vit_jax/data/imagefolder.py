"""ImageNet-style folders: <root>/<split>/<class>/<image>, decoded with PIL.

Every image is converted to RGB (grayscale, palette, CMYK and RGBA files
included). A file that cannot be decoded comes back as image None with its path
under 'unreadable': training replaces it within its batch and evaluation leaves it
out, and the trainer reports each such file once at the end of the epoch and of the
evaluation; it never stops a run.
"""
import os

import numpy as np
from PIL import Image

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


PREPARE = 'python -m vit_jax.data.prepare_imagenet100 --src SRC --dst DST'


def list_classes(root: str, split: str) -> list[str]:
  """The class folders of root/split (hidden entries and loose files passed over)."""
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'dataset.data_dir={root!r} has no {split}/ folder; expected '
                            f'{split}/<class>/<image> (build it with {PREPARE})')
  entries = [e for e in sorted(os.listdir(folder)) if not e.startswith('.')]
  classes = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
  if not classes:
    loose = [e for e in entries if e.lower().endswith(EXTENSIONS)]
    if loose:
      raise ValueError(f'{folder!r} holds {len(loose)} images directly, not in class folders '
                       f"(ILSVRC2012's flat val layout); sort them with {PREPARE} "
                       '--val_labels=LOC_val_solution.csv')
    raise FileNotFoundError(f'{folder!r} has no class folders')
  return classes


def check_tree(root: str) -> list[str]:
  """Classes of train/, which val/ must match exactly; one-line errors otherwise."""
  train, val = list_classes(root, 'train'), list_classes(root, 'val')
  if train != val:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    raise ValueError(f'train/ and val/ class folders in {root!r} differ: only in train '
                     f'{only_train[:5]} ({len(only_train)}), only in val {only_val[:5]} '
                     f'({len(only_val)}); every class needs both (rebuild with {PREPARE})')
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
        if name.lower().endswith(EXTENSIONS) and not name.startswith('.'):
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
        return {'image': np.asarray(img.convert('RGB'), np.uint8), 'label': np.int32(label)}
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      return {'image': None, 'label': np.int32(label), 'unreadable': f'{path} ({e})'}
