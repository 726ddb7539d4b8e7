"""Random-access data sources: each item is {'image': uint8 (H, W, 3), 'label': int}."""
import dataclasses
import importlib.util
import json
import os

import numpy as np

from vit_jax import config_lib


@dataclasses.dataclass(frozen=True)
class Dataset:
  """How a data set is stored and how its images are cropped."""
  storage: str                 # 'digits' (scikit-learn's, in memory) | 'idx' (Fashion-MNIST's
                               # files, in memory) | 'tfds' | 'folder'
  # Images of any size: training takes a RandomResizedCrop to dataset.image_size and
  # evaluation a centre crop (dataset.eval_crop_ratio); otherwise they come at that size.
  any_size: bool = False
  tfds_splits: tuple = (('train', 'train'), ('val', 'test'))   # ours -> the tfds split
  # Files tfds cannot download, which its preparation reads from <data_dir>/downloads/manual.
  manual_files: tuple = ()


# dataset.name -> Dataset: the one table of data sets (a new one is a line here).
DATASETS = {
    'digits': Dataset('digits'),
    # Fashion-MNIST: 60,000 / 10,000 grey 28x28 images, 10 classes; Debian's
    # dataset-fashion-mnist or dataset.data_dir (data/fashion_mnist.py).
    'fashion_mnist': Dataset('idx'),
    'cifar10': Dataset('tfds'),
    'cifar100': Dataset('tfds'),
    'imagenet100': Dataset('folder', any_size=True),   # data/prepare_imagenet100.py
    # ImageNet-1k (ILSVRC 2012): 1,281,167 training and 50,000 validation images, tfds'
    # `imagenet2012` prepared as array_record from the two tars of image-net.org.
    'imagenet2012': Dataset('tfds', any_size=True,
                            tfds_splits=(('train', 'train'), ('val', 'validation')),
                            manual_files=('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')),
}


PADDING_MODES = ('constant', 'reflect')   # dataset.crop_padding_mode (np.pad modes)
RANGES = (('dataset.repeated_aug', 1, 64), ('dataset.workers', 0, 1024),
          ('dataset.eval_crop_ratio', 1e-3, 1.0), ('dataset.random_crop_padding', 0, 1024))


def check(config) -> None:
  """config.dataset names a data set of DATASETS, crops it in ways the pipeline knows, and
  loads it with a sensible number of workers. (Whether its files are there is asked by the
  trainers that read them: check_available.)"""
  lookup(config.dataset.name)
  config_lib.check_ranges(config, RANGES)
  config_lib.check_choices(config, (('dataset.crop_padding_mode', PADDING_MODES),))


def lookup(name: str) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f'dataset.name={name!r} is not one of {tuple(DATASETS)}')
  return DATASETS[name]
RANDOM_ACCESS_FORMATS = ('array_record', 'parquet')   # what tfds.data_source reads
DIGITS_VAL_SIZE = 297   # fixed split of the 1,797 images: 1,500 train / 297 validation


class ArraySource:
  """In-memory images and labels (grain's RandomAccessDataSource protocol)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, name: str):
    self.images, self.labels, self.name = images, labels, name

  def __repr__(self):  # grain checks this against the checkpointed iterator state
    return f'ArraySource({self.name}, {len(self)} images of {self.images.shape[1:]})'

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': np.int32(self.labels[i])}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images (1797, 8, 8) in 0..16, labels) from the file scikit-learn ships, read as its
  load_digits() reads it, without importing scikit-learn (1.3 s of every start-up)."""
  spec = importlib.util.find_spec('sklearn')
  if spec is None:
    raise FileNotFoundError('the digits data set comes with scikit-learn: pip install scikit-learn')
  data = np.loadtxt(os.path.join(spec.submodule_search_locations[0], 'datasets', 'data',
                                 'digits.csv.gz'), delimiter=',')
  return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digits(split: str, image_size: int) -> ArraySource:
  """scikit-learn's bundled 8x8 digits, upsampled (nearest) to image_size, grey -> RGB."""
  if image_size % 8:
    raise ValueError(f'dataset.image_size={image_size} for digits must be a multiple of 8')
  images, target = load_digits()
  images = np.round(images * (255 / 16)).astype(np.uint8)          # 0..16 -> 0..255
  f = image_size // 8
  images = np.repeat(np.repeat(images, f, axis=1), f, axis=2)
  images = np.repeat(images[..., None], 3, axis=-1)
  order = np.random.default_rng(1797).permutation(len(images))       # fixed, not config.seed
  idx = order[DIGITS_VAL_SIZE:] if split == 'train' else order[:DIGITS_VAL_SIZE]
  return ArraySource(images[idx], target[idx].astype(np.int32), f'digits:{split}')


def fashion_mnist(split: str, data_dir: str, image_size: int) -> ArraySource:
  """Fashion-MNIST's 'train' or 'val' (= its test files) at 28x28, grey -> RGB."""
  from vit_jax.data import fashion_mnist as fm
  fm.check_image_size(image_size)
  images, labels = fm.load(data_dir, split)
  return ArraySource(np.repeat(images[..., None], 3, axis=-1), labels, f'fashion_mnist:{split}')


def prepare_command(name: str, data_dir: str) -> str:
  arg = f", data_dir={data_dir!r}" if data_dir else ''
  return (f"python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}{arg})"
          f".download_and_prepare(file_format='array_record')\"")


def check_tfds_prepared(name: str, data_dir: str) -> None:
  """Fail in one line, without touching the network, if `name` is not prepared, or is
  prepared in a file format tfds.data_source cannot read at random (tfrecord)."""
  root = data_dir or os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))
  builder_dir = os.path.join(root, name)
  versions = sorted(os.listdir(builder_dir)) if os.path.isdir(builder_dir) else []
  prepared = [v for v in versions
              if os.path.exists(os.path.join(builder_dir, v, 'dataset_info.json'))]
  if not prepared:
    manual = DATASETS[name].manual_files if name in DATASETS else ()
    if manual:
      raise FileNotFoundError(
          f'dataset {name!r} is not prepared in {root}; tfds cannot download it: put '
          f'{" and ".join(manual)} (from image-net.org) in '
          f'{os.path.join(root, "downloads", "manual")}, then prepare it with: '
          f'{prepare_command(name, data_dir)}')
    raise FileNotFoundError(
        f'dataset {name!r} is not prepared in {root}; prepare it where there is internet '
        f'with: {prepare_command(name, data_dir)}')
  version_dir = os.path.join(builder_dir, prepared[-1])
  with open(os.path.join(version_dir, 'dataset_info.json')) as f:
    file_format = json.load(f).get('fileFormat', 'tfrecord')
  if file_format not in RANDOM_ACCESS_FORMATS:
    raise ValueError(
        f'dataset {name!r} in {version_dir} is prepared as {file_format}, which random access '
        f'cannot read; convert it in place with: pip install apache-beam && tfds '
        f'convert_format --dataset_version_dir={version_dir} --out_file_format=array_record '
        f'(or prepare it anew with: {prepare_command(name, data_dir)})')


def tfds_source(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds
  check_tfds_prepared(name, data_dir)
  return tfds.data_source(name, split=dict(lookup(name).tfds_splits)[split],
                          data_dir=data_dir or None, download=False, try_gcs=False)


def get(dataset_cfg, split: str):
  storage = lookup(dataset_cfg.name).storage
  if storage == 'digits':
    return digits(split, dataset_cfg.image_size)
  if storage == 'idx':
    return fashion_mnist(split, dataset_cfg.data_dir, dataset_cfg.image_size)
  if storage == 'folder':
    from vit_jax.data import imagefolder
    return imagefolder.ImageFolderSource(dataset_cfg.data_dir, split)
  return tfds_source(dataset_cfg.name, split, dataset_cfg.data_dir)


def eval_crop(dataset_cfg) -> int | None:
  """Images of any size are centre-cropped to this for evaluation; the others are exact."""
  return dataset_cfg.image_size if lookup(dataset_cfg.name).any_size else None


def check_available(dataset_cfg) -> None:
  """One-line error, before any work, if the data set is not there, or is a folder tree of
  another number of classes than the model's head has."""
  name = dataset_cfg.name
  storage = lookup(name).storage
  if storage == 'folder':
    from vit_jax.data import imagefolder
    if not dataset_cfg.data_dir:
      raise ValueError(f'dataset {name!r} needs --config.dataset.data_dir=DIR holding '
                       f'train/<class>/ and val/<class>/ (python -m vit_jax.data.prepare_imagenet100)')
    classes = len(imagefolder.check_tree(dataset_cfg.data_dir))
    if classes != dataset_cfg.num_classes:
      raise ValueError(f'dataset.data_dir={dataset_cfg.data_dir!r} holds {classes} class folders '
                       f'but dataset.num_classes={dataset_cfg.num_classes}; point data_dir at a '
                       f'tree of {dataset_cfg.num_classes} classes, or set '
                       f'--config.dataset.num_classes={classes} for a head of {classes}')
  elif storage == 'tfds':
    check_tfds_prepared(name, dataset_cfg.data_dir)
  elif storage == 'idx':
    from vit_jax.data import fashion_mnist as fm
    fm.check_image_size(dataset_cfg.image_size)
    fm.check_files(dataset_cfg.data_dir)
