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


def readable_extensions() -> tuple[str, ...]:
  """The file extensions of every format this PIL can open (Image.registered_extensions)."""
  Image.init()   # registers every plugin, not only the few preinit loads
  return tuple(sorted(e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


class ImageListSource:
  """Every image under a folder of the user's (any depth, any format PIL opens), in path
  order, without labels (label -1); for analysing a model on one's own pictures."""

  def __init__(self, root: str, what: str = 'analysis.images'):
    if not os.path.isdir(root):
      raise FileNotFoundError(f'{what}={root!r} is not a folder; give a folder of images '
                              '(searched recursively)')
    extensions = readable_extensions()
    paths = []
    for folder, dirs, files in os.walk(root):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      paths += [os.path.join(folder, f) for f in sorted(files)
                if not f.startswith('.') and f.lower().endswith(extensions)]
    if not paths:
      raise FileNotFoundError(f'{what}={root!r} holds no images in any format PIL opens '
                              f'({", ".join(e for e in EXTENSIONS)}, ...), searched recursively')
    self.root, self.paths = root, sorted(paths)

  def __len__(self):
    return len(self.paths)

  def __repr__(self):
    return f'ImageListSource({self.root!r}, {len(self)} images)'

  def __getitem__(self, i):
    path = self.paths[i]
    try:
      with Image.open(path) as img:
        return {'image': np.asarray(img.convert('RGB'), np.uint8), 'label': np.int32(-1)}
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      return {'image': None, 'label': np.int32(-1), 'unreadable': f'{path} ({e})'}
