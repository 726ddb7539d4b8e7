"""Runs `python -m MODULE ARGS...` with every write to a file whose path holds PATTERN failing
as on a full disk (ENOSPC at the write; the file itself is made), for the CLI tests:

  python tests/full_disk.py PATTERN -m vit_jax.main --config ... --workdir ...
"""
import builtins
import errno
import os
import runpy
import sys


class _FullFile:
  """A file opened for writing on a disk that has no room left."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    del data
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def __getattr__(self, name):
    return getattr(self._f, name)


def main():
  pattern, flag, module, *args = sys.argv[1:]
  assert flag == '-m', 'usage: full_disk.py PATTERN -m MODULE ARGS...'
  real_open = builtins.open

  def open_(file, mode='r', *a, **kw):
    f = real_open(file, mode, *a, **kw)
    if pattern in str(file) and any(m in mode for m in 'wax+'):
      return _FullFile(f)
    return f

  builtins.open = open_
  sys.argv = [module, *args]
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
