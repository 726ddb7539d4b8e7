r"""Build the ImageNet-100 folder tree that `dataset.name='imagenet100'` reads.

  python -m vit_jax.data.prepare_imagenet100 --src /data/imagenet --dst data/imagenet100
  python -m vit_jax.data.prepare_imagenet100 --src /data/archive --dst data/imagenet100

--src is either an ImageNet-1k tree (train/<wnid>/, val/<wnid>/), from which
the 100 classes of imagenet100_classes.txt are taken, or the reference layout
of seed 002 (train.X1 .. train.X4 and val.X, each holding <wnid>/ folders),
whose class folders are merged as they are. The result is
<dst>/train/<wnid>/ and <dst>/val/<wnid>/ of symbolic links (--copy copies).
"""
import os
import shutil

from absl import app
from absl import flags

_SRC = flags.DEFINE_string('src', None, 'ImageNet-1k root or the train.X*/val.X archive root.')
_DST = flags.DEFINE_string('dst', None, 'Output root; must not exist yet.')
_COPY = flags.DEFINE_bool('copy', False, 'Copy files instead of symlinking them.')

CLASS_FILE = os.path.join(os.path.dirname(__file__), 'imagenet100_classes.txt')


def class_list() -> list[str]:
  with open(CLASS_FILE) as f:
    return [l.strip() for l in f if l.strip() and not l.startswith('#')]


def plan(src: str) -> dict[str, list[str]]:
  """{'train': [class dirs...], 'val': [...]} to merge, from either layout."""
  entries = os.listdir(src) if os.path.isdir(src) else []
  parts = sorted(e for e in entries if e.startswith('train.X'))
  if parts and 'val.X' in entries:
    return {'train': [os.path.join(src, p) for p in parts], 'val': [os.path.join(src, 'val.X')]}
  if 'train' in entries and 'val' in entries:
    return {'train': [os.path.join(src, 'train')], 'val': [os.path.join(src, 'val')]}
  raise FileNotFoundError(f'--src={src!r} holds neither train/ and val/ (ImageNet-1k) nor '
                          f'train.X1..train.X4 and val.X (the reference layout)')


def build(src: str, dst: str, copy: bool = False) -> dict[str, int]:
  """Returns the number of images written per split."""
  if os.path.exists(dst):
    raise FileExistsError(f'--dst={dst!r} exists; choose a new directory')
  roots = plan(src)
  reference_layout = os.path.basename(roots['val'][0]) == 'val.X'
  wanted = None if reference_layout else class_list()
  tmp = dst + '.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  counts = {}
  for split, dirs in roots.items():
    n = 0
    for d in dirs:
      for wnid in sorted(os.listdir(d)):
        if wanted is not None and wnid not in wanted:
          continue
        out = os.path.join(tmp, split, wnid)
        os.makedirs(out, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(d, wnid))):
          source = os.path.abspath(os.path.join(d, wnid, name))
          target = os.path.join(out, name)
          shutil.copyfile(source, target) if copy else os.symlink(source, target)
          n += 1
    counts[split] = n
  if wanted is not None:
    missing = sorted(set(wanted) - set(os.listdir(os.path.join(tmp, 'train'))))
    if missing:
      shutil.rmtree(tmp)
      raise FileNotFoundError(f'{len(missing)} of the 100 classes are not in --src, '
                              f'e.g. {missing[:3]}')
  os.replace(tmp, dst)   # all or nothing
  return counts


def main(argv):
  del argv
  try:
    counts = build(_SRC.value, _DST.value, _COPY.value)
  except (FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f'error: {e}')
  print(f"wrote {_DST.value}: {counts['train']} train and {counts['val']} val images")


if __name__ == '__main__':
  flags.mark_flags_as_required(['src', 'dst'])
  app.run(main)
