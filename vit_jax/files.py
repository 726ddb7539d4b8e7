"""Files written whole, and the one check that a folder takes new files.

Every file a run, an analysis or a tool leaves (metrics.csv, config.json, the run lock,
analysis.json, a scoreboard, an export) is written aside and put in place in one step, so
a reader, or a run killed at any instant, sees the old content or the new, never a part;
a failed write leaves nothing behind and the old file as it was.
"""
import contextlib
import json
import os
import shutil
import tempfile
import uuid


@contextlib.contextmanager
def atomic(path: str, mode: str = 'w', *, overwrite: bool = True, before_commit=None,
           **open_kwargs):
  """A file object for `path`'s new content. It is written aside (PATH.tmpPID) and, when the
  block ends without error, put in place: os.replace, or with overwrite=False os.link (which
  raises FileExistsError if PATH exists: a lock). `before_commit` runs between the two (a
  test's fault point). On any error the file aside is removed and PATH is untouched."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
    if before_commit is not None:
      before_commit()
    if overwrite:
      os.replace(tmp, path)
    else:
      os.link(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic(path) as f:
    f.write(text)


def write_json(path: str, data, indent: int = 1) -> None:
  with atomic(path) as f:
    json.dump(data, f, indent=indent)


@contextlib.contextmanager
def atomic_dir(path: str):
  """A new folder for `path`, filled in the block and renamed into place when it ends without
  error (removed on any error). A folder made beside it, with the mode mkdir gives under the
  umask (tempfile.mkdtemp's would be 0700)."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f'.{os.path.basename(path)}.{uuid.uuid4().hex}')
  os.mkdir(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def unwritable(folder: str) -> str | None:
  """Why a new file cannot be made in `folder` (its strerror), or None if one can. A real
  write is tried: os.access passes for root on a read-only file system."""
  try:
    tempfile.TemporaryFile(dir=folder).close()
  except OSError as e:
    return e.strerror or str(e)
  return None


def require_writable(target: str, what: str, advice: str, also=()) -> None:
  """ValueError in one line unless files can be made where `target` (a folder that may not
  exist yet) will be: in it, or else in the nearest folder above that exists; and in each
  existing subfolder named in `also` (e.g. a finished run's checkpoints/, with its own mode).
  `what` names the target ('workdir'), `advice` says what to do."""
  target = os.path.abspath(target)
  if os.path.exists(target) and not os.path.isdir(target):
    raise ValueError(f'{what} {target!r} exists and is not a directory; {advice}')
  folder = target
  while not os.path.isdir(folder):
    folder = os.path.dirname(folder)
  name = what if folder == target else f'the folder that would hold {what}'
  for path in [folder] + [p for p in (os.path.join(target, a) for a in also) if os.path.isdir(p)]:
    why = unwritable(path)
    if why:
      raise ValueError(f'{name} {path!r} is not writable ({why}); {advice}')
