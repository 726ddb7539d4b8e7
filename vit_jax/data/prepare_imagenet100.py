r"""Build the ImageNet-100 folder tree that `dataset.name='imagenet100'` reads.

  python -m vit_jax.data.prepare_imagenet100 --src /data/imagenet --dst data/imagenet100
  python -m vit_jax.data.prepare_imagenet100 --src /data/ILSVRC2012 --dst data/imagenet100 \
      --val_labels /data/LOC_val_solution.csv
  python -m vit_jax.data.prepare_imagenet100 --src /data/archive --dst data/imagenet100

--src is either an ImageNet-1k tree (train/<wnid>/ and val/, the latter as <wnid>/
folders or, as ILSVRC2012 ships it, flat ILSVRC2012_val_*.JPEG files sorted into
classes by --val_labels), from which the 100 classes of imagenet100_classes.txt are
taken, or the reference layout of seed 002 (train.X1 .. train.X4 and val.X, each
holding <wnid>/ folders), whose class folders are merged as they are. The result is
<dst>/train/<wnid>/ and <dst>/val/<wnid>/ of symbolic links (--copy copies).

The tree is built in <dst>.partial and checked as training checks it (the same
classes in train/ and val/, images in each) before it is moved into place, so a
success is a tree that trains; on any error nothing is left behind, one line says
what is wrong, and the exit code is 2. Hidden entries (.DS_Store, ...) and files
that are not images are passed over.
"""
import csv
import os
import shutil

from absl import app
from absl import flags

from vit_jax import exits
from vit_jax import files
from vit_jax.data import imagefolder

_SRC = flags.DEFINE_string('src', None, 'ImageNet-1k root or the train.X*/val.X archive root.')
_DST = flags.DEFINE_string('dst', None, 'Output root; must not exist yet.')
_COPY = flags.DEFINE_bool('copy', False, 'Copy files instead of symlinking them.')
_VAL_LABELS = flags.DEFINE_string(
    'val_labels', None, 'For a flat val/: LOC_val_solution.csv (ImageId,PredictionString), '
    'or a text file of one wnid per line for the sorted val images.')

CLASS_FILE = os.path.join(os.path.dirname(__file__), 'imagenet100_classes.txt')


def class_list() -> list[str]:
  with open(CLASS_FILE) as f:
    return [l.strip() for l in f if l.strip() and not l.startswith('#')]


def _visible(folder: str) -> list[str]:
  return sorted(e for e in os.listdir(folder) if not e.startswith('.'))


def _dirs(folder: str) -> list[str]:
  return [e for e in _visible(folder) if os.path.isdir(os.path.join(folder, e))]


def _images(folder: str) -> list[str]:
  return [e for e in _visible(folder) if e.lower().endswith(imagefolder.EXTENSIONS)
          and os.path.isfile(os.path.join(folder, e))]


def plan(src: str) -> dict[str, list[str]]:
  """{'train': [roots of class dirs...], 'val': [...]} to merge, from either layout."""
  entries = os.listdir(src) if os.path.isdir(src) else []
  parts = sorted(e for e in entries if e.startswith('train.X'))
  if parts and 'val.X' in entries:
    return {'train': [os.path.join(src, p) for p in parts], 'val': [os.path.join(src, 'val.X')]}
  if 'train' in entries and 'val' in entries:
    return {'train': [os.path.join(src, 'train')], 'val': [os.path.join(src, 'val')]}
  raise FileNotFoundError(f'--src={src!r} holds neither train/ and val/ (ImageNet-1k) nor '
                          f'train.X1..train.X4 and val.X (the reference layout)')


def read_val_labels(path: str, names: list[str]) -> dict[str, str]:
  """{val file name: wnid} from LOC_val_solution.csv or a one-wnid-per-line text file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--val_labels={path!r} does not exist')
  with open(path, newline='') as f:
    first = f.readline()
    f.seek(0)
    if first.startswith('ImageId'):
      labels = {row['ImageId']: row['PredictionString'].split()[0] for row in csv.DictReader(f)}
      return {n: labels[os.path.splitext(n)[0]] for n in names
              if os.path.splitext(n)[0] in labels}
    wnids = [l.strip() for l in f if l.strip()]
  if len(wnids) != len(names):
    raise ValueError(f'--val_labels={path!r} has {len(wnids)} lines for the {len(names)} '
                     'images of the flat val/ (one wnid per image, in sorted file order)')
  return dict(zip(names, wnids))


def _flat_val(root: str, val_labels: str | None) -> dict[str, list[str]]:
  """{wnid: [paths]} of a val/ that holds the images directly."""
  names = _images(root)
  if val_labels is None:
    raise ValueError(f'{root!r} holds {len(names)} images directly, not in class folders '
                     "(ILSVRC2012's flat layout); give their classes with "
                     '--val_labels=LOC_val_solution.csv (or a text file of one wnid per line)')
  by_class = {}
  for name, wnid in read_val_labels(val_labels, names).items():
    by_class.setdefault(wnid, []).append(os.path.join(root, name))
  return by_class


def _link(sources: list[str], out: str, copy: bool) -> int:
  os.makedirs(out, exist_ok=True)
  for source in sources:
    target = os.path.join(out, os.path.basename(source))
    source = os.path.abspath(source)
    shutil.copyfile(source, target) if copy else os.symlink(source, target)
  return len(sources)


def build(src: str, dst: str, copy: bool = False, val_labels: str | None = None) -> dict:
  """Returns the number of images written per split; all or nothing."""
  if os.path.exists(dst):
    raise FileExistsError(f'--dst={dst!r} exists; choose a new directory')
  roots = plan(src)
  reference_layout = os.path.basename(roots['val'][0]) == 'val.X'
  wanted = None if reference_layout else set(class_list())
  with files.atomic_dir(dst) as tmp:
    counts = {}
    for split, dirs in roots.items():
      classes = {}
      for d in dirs:
        if split == 'val' and not reference_layout and _images(d) and not _dirs(d):
          found = _flat_val(d, val_labels)
        else:
          found = {wnid: [os.path.join(d, wnid, n) for n in _images(os.path.join(d, wnid))]
                   for wnid in _dirs(d)}
        for wnid, paths in found.items():
          if wanted is None or wnid in wanted:
            classes.setdefault(wnid, []).extend(paths)
      counts[split] = sum(_link(paths, os.path.join(tmp, split, wnid), copy)
                          for wnid, paths in sorted(classes.items()))
    if wanted is not None:
      missing = sorted(wanted - set(_dirs(os.path.join(tmp, 'train'))))
      if missing:
        raise FileNotFoundError(f'{len(missing)} of the 100 classes are not in --src '
                                f'train/, e.g. {missing[:3]}')
    check(tmp)
  return counts


def check(root: str) -> None:
  """What training checks of the tree, and a val image in every class."""
  for split in ('train', 'val'):
    if not os.path.isdir(os.path.join(root, split)):
      raise FileNotFoundError(f'the tree would have no {split}/ images')
  classes = imagefolder.check_tree(root)
  empty = [c for c in classes if not _images(os.path.join(root, 'val', c))]
  if empty:
    raise ValueError(f'{len(empty)} classes would have no val/ image, e.g. {empty[:3]}')


def main(argv):
  del argv
  try:
    counts = build(_SRC.value, _DST.value, _COPY.value, _VAL_LABELS.value)
  except (OSError, ValueError, KeyError) as e:
    exits.fail(str(e))
  print(f"wrote {_DST.value}: {counts['train']} train and {counts['val']} val images")


if __name__ == '__main__':
  flags.mark_flags_as_required(['src', 'dst'])
  app.run(main)
