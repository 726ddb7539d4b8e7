"""One live run per workdir: `workdir/run.lock` names the host and pid of the run using it.

A run takes the lock before it writes anything and gives it back when it ends
(finished, failed or preempted). A second run on the workdir is refused in one
line naming the live one. A lock whose run is gone is taken over with one
warning line: on this host, when no process has its pid (with its start time:
pids are reused); from another host, when its lease has not been renewed for
`lease_s` seconds (the owner renews it every `renew_s`), since a workdir on a
shared file system offers no other sign of life.

The lock file appears whole or not at all (written aside, then hard-linked into
place, which fails if a lock is there); a stale lock is renamed away before a
new one is linked, so two runs taking over at once cannot both win.
"""
import datetime
import json
import os
import socket
import sys
import threading
import time

from vit_jax import files

LOCK = 'run.lock'


class Locked(ValueError):
  """The workdir is in use by a live run (the message is one line)."""


def proc_stat(pid: int) -> list[str] | None:
  """The fields of Linux's /proc/<pid>/stat after the command name (which may hold spaces
  and parentheses): [0] the state, [19] the start time in clock ticks; None if unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()
  except (OSError, IndexError):
    return None


def _proc_start(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks (Linux /proc), None if unknown."""
  fields = proc_stat(pid)
  return fields[19] if fields and len(fields) > 19 else None


def _me() -> dict:
  now = time.time()
  return dict(host=socket.gethostname(), pid=os.getpid(), proc_start=_proc_start(os.getpid()),
              started=now, renewed=now)


def read(workdir: str) -> dict | None:
  """The lock's content; {} for a file that does not parse; None for no lock."""
  try:
    with open(os.path.join(workdir, LOCK)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def alive(info: dict, lease_s: float) -> bool:
  """Whether the run that wrote `info` may still be running."""
  if not info:
    return False
  if info.get('host') == socket.gethostname():
    pid = info.get('pid')
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass
    except (TypeError, OverflowError):
      return False
    start = _proc_start(pid)
    return start is None or info.get('proc_start') in (None, start)
  return time.time() - float(info.get('renewed', 0)) < lease_s


def describe(info: dict) -> str:
  if not info:
    return 'an unreadable lock'
  started = datetime.datetime.fromtimestamp(float(info.get('started', 0)), datetime.timezone.utc)
  renewed = time.time() - float(info.get('renewed', 0))
  return (f"pid {info.get('pid')} on host {info.get('host')} (started "
          f"{started:%Y-%m-%d %H:%M:%S} UTC, lease renewed {renewed:.0f} s ago)")


def check_settings(lease_s: float, renew_s: float) -> None:
  """config.run_lock: the owner renews its lease well within it."""
  if not 0 < renew_s < lease_s:
    raise ValueError(f'run_lock.renew_s={renew_s} must be in (0, run_lock.lease_s={lease_s})')


def check(workdir: str, lease_s: float) -> dict | None:
  """Refuse (Locked) if a live run holds the workdir; else the stale lock's info, or None.

  Reads only: nothing in the workdir is touched.
  """
  info = read(workdir)
  if info is not None and alive(info, lease_s):
    raise Locked(f'workdir {workdir!r} is in use by a live run: {describe(info)}; wait for it '
                 f'to end or use another --workdir')
  return info


def _link_new(path: str, info: dict) -> bool:
  """Create the lock with `info` unless one exists (written aside, hard-linked into place)."""
  try:
    with files.atomic(path, overwrite=False) as f:
      json.dump(info, f)
    return True
  except FileExistsError:
    return False


class RunLock:
  """Holds workdir/run.lock from acquire() to release(), renewing its lease meanwhile."""

  def __init__(self, workdir: str, lease_s: float, renew_s: float, log=None):
    self.workdir, self.lease_s, self.renew_s = workdir, lease_s, renew_s
    self.path = os.path.join(workdir, LOCK)
    self.info = None
    self._stop = threading.Event()
    self._thread = None
    self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

  def acquire(self) -> 'RunLock':
    """Take the lock (Locked if a live run has it; OSError in one line if it cannot be
    written, e.g. on a full disk, leaving nothing behind)."""
    try:
      return self._acquire()
    except OSError as e:
      raise OSError(f'could not write the run lock {self.path} ({e.strerror or e}); nothing '
                    'was started') from None

  def _acquire(self) -> 'RunLock':
    os.makedirs(self.workdir, exist_ok=True)
    me = _me()
    for _ in range(100):
      if _link_new(self.path, me):
        self.info = me
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()
        return self
      stale = check(self.workdir, self.lease_s)
      if stale is None:        # gone between the two looks: try again
        continue
      self._set_aside(stale)
    raise Locked(f'could not take the lock of workdir {self.workdir!r}: other runs keep '
                 'taking it')

  def _set_aside(self, stale: dict) -> None:
    """Rename the stale lock away; if what got renamed is not it (another run took over
    meanwhile), put that back."""
    aside = f'{self.path}.stale.{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    try:
      with open(aside) as f:
        moved = json.load(f)
    except (OSError, ValueError):
      moved = {}
    if moved and stale and (moved.get('pid'), moved.get('host'), moved.get('started')) != (
        stale.get('pid'), stale.get('host'), stale.get('started')):
      os.replace(aside, self.path)
      raise Locked(f'workdir {self.workdir!r} is in use by a live run: {describe(moved)}; '
                   'wait for it to end or use another --workdir')
    os.remove(aside)
    self._log(f'warning: taking over workdir {self.workdir!r} from a run that is gone: '
              f'{describe(stale)}')

  def _renew(self) -> None:
    while not self._stop.wait(self.renew_s):
      if read(self.workdir) != self.info:      # someone else's now: stop touching it
        return
      renewed = dict(self.info, renewed=time.time())
      files.write_json(self.path, renewed, indent=None)
      self.info = renewed        # only once it is on disk: a failed write leaves both as they were

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.info is not None and read(self.workdir) == self.info:
      os.remove(self.path)
    self.info = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
