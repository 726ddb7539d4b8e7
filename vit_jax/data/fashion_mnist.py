"""Fashion-MNIST from its four idx files (Xiao et al. 2017): 60,000 / 10,000 grey 28x28
images of 10 clothing classes, 6,000 / 1,000 of each.

Read from `dataset.data_dir` when set, else from where Debian's `dataset-fashion-mnist`
installs them; each file plain or gzipped. Splits and labels are the files' own, which
are tfds' `fashion_mnist` train / test (tests/test_fashion_mnist.py parses the same files
with tfds' own reader). We read the files ourselves rather than through tfds' builder:
that builder checks the sha256 of the upstream .gz files, which the Debian package
recompressed (its gzip headers lack the file name, 24 bytes shorter; the data inside are
the same), and a GPU machine without TensorFlow must still read them.
"""
import functools
import gzip
import os

import numpy as np

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
INSTALL = 'apt-get install -y dataset-fashion-mnist'
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
           'Sneaker', 'Bag', 'Ankle boot')
IMAGE_SHAPE = (28, 28)
# split -> (file prefix, number of images); each class has a tenth of them.
SPLITS = {'train': ('train', 60000), 'val': ('t10k', 10000)}
_MAGIC = {'images': 2051, 'labels': 2049}   # idx: ubyte data, 3 or 1 dimensions


def directory(data_dir: str) -> str:
  return data_dir or DEBIAN_DIR


def file_path(folder: str, prefix: str, kind: str) -> str | None:
  """The idx file of `kind` ('images' | 'labels'), gzipped or not, or None."""
  name = f'{prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte'
  for candidate in (name, name + '.gz'):
    if os.path.isfile(os.path.join(folder, candidate)):
      return os.path.join(folder, candidate)
  return None


def check_image_size(image_size: int) -> None:
  if image_size != IMAGE_SHAPE[0]:
    raise ValueError(f'dataset.image_size={image_size} for fashion_mnist must be '
                     f'{IMAGE_SHAPE[0]} (its images are 28x28)')


def check_files(data_dir: str) -> None:
  """One line naming what is missing and the two ways to provide it."""
  folder = directory(data_dir)
  missing = [f'{prefix}-{kind}' for prefix, _ in SPLITS.values() for kind in _MAGIC
             if file_path(folder, prefix, kind) is None]
  if missing:
    where = (f'dataset.data_dir={data_dir!r}' if data_dir else f'{DEBIAN_DIR} (Debian\'s '
             'dataset-fashion-mnist)')
    raise FileNotFoundError(
        f'Fashion-MNIST is missing from {where}: no {", ".join(missing)} idx file (.gz or '
        f'plain); install it with `{INSTALL}` (as root), or set --config.dataset.data_dir to '
        'a folder holding the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, '
        't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte')


def read_idx(path: str, kind: str, count: int) -> np.ndarray:
  """An idx file's array: the header's magic number, count and shape are checked."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  ndim = 3 if kind == 'images' else 1
  header = 4 * (1 + ndim)
  if len(data) < header:
    raise ValueError(f'{path}: {len(data)} bytes, shorter than an idx header')
  magic, *dims = np.frombuffer(data[:header], '>u4').tolist()
  expected = [count, *IMAGE_SHAPE] if kind == 'images' else [count]
  if magic != _MAGIC[kind] or dims != expected:
    raise ValueError(f'{path}: idx magic {magic} and shape {dims}, expected {_MAGIC[kind]} and '
                     f'{expected} (Fashion-MNIST {kind})')
  if len(data) != header + int(np.prod(expected)):
    raise ValueError(f'{path}: {len(data) - header} data bytes, expected '
                     f'{int(np.prod(expected))}: truncated or not Fashion-MNIST')
  return np.frombuffer(data, np.uint8, offset=header).reshape(expected)


@functools.lru_cache(maxsize=4)
def load(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,) int32) of 'train' or 'val' (the test files),
  checked: N, the image shape, labels in 0..9 and N / 10 of each class."""
  check_files(data_dir)
  prefix, count = SPLITS[split]
  folder = directory(data_dir)
  images = read_idx(file_path(folder, prefix, 'images'), 'images', count)
  labels = read_idx(file_path(folder, prefix, 'labels'), 'labels', count).astype(np.int32)
  per_class = np.bincount(labels, minlength=len(CLASSES))
  if len(per_class) != len(CLASSES) or (per_class != count // len(CLASSES)).any():
    raise ValueError(f'{file_path(folder, prefix, "labels")}: labels per class '
                     f'{per_class.tolist()}, expected {count // len(CLASSES)} of each of '
                     f'{len(CLASSES)} classes')
  return images, labels
