r"""Mutation testing: one-line mistakes, each applied alone to a copy of the repository,
each running only the test files that cover its module (tests/mutations.py holds both the
list and the map). A mutant whose tests all pass 'survives': the suite cannot tell the
mistake from the code, unless the list explains why it is an equivalent mutant.

  python tests/mutate.py                          # every mutation of tests/mutations.py
  python tests/mutate.py --module vit_jax/train/optim.py --out /tmp/optim.md
  python tests/mutate.py --only optim-3 --only optim-5
  python tests/mutate.py --file vit_jax/data/pipeline.py --find 'ratio[0]' \
      --replace 'ratio[1]' [--tests tests/reference/test_ref_crops.py]   # one, ad hoc
  python tests/mutate.py --list

The working tree is never written: the files git lists are copied to a temporary folder,
the mutant's file is rewritten there and put back (in a `finally`, and on Ctrl-C) before
the next one, and the tests run there (PYTHONPATH and cwd on the copy, no bytecode
written, so a mutant's code can never be read from a stale .pyc). It refuses to start
while a pytest process runs on this working tree (the machine has two cores; timings and
the shared compilation cache would suffer), or while another mutation run holds its lock.
Exit status: 0 when every mutant is killed or explained, 1 when one survives
unexplained, 2 on a bad list or a baseline that fails.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
import mutations as listing  # noqa: E402  (tests/mutations.py, next to this file)

KILLED, SURVIVED, EQUIVALENT, TIMEOUT, ERROR = ('killed', 'SURVIVED', 'equivalent', 'timeout',
                                                'error')


@dataclasses.dataclass
class Outcome:
  mutation: 'listing.Mutation'
  status: str
  seconds: float
  detail: str = ''


def repo_files() -> list[str]:
  out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                       cwd=REPO, capture_output=True, check=True).stdout
  return [f for f in out.decode().split('\0') if f and os.path.isfile(os.path.join(REPO, f))]


def copy_repo(dest: str) -> None:
  for rel in repo_files():
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    shutil.copy2(os.path.join(REPO, rel), os.path.join(dest, rel))


def other_pytests() -> list[str]:
  """pids and command lines of pytest processes working on this tree (cwd or an argument
  inside it), other than this run's own children."""
  found = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      args = open(f'/proc/{pid}/cmdline', 'rb').read().decode().split('\0')
      cwd = os.readlink(f'/proc/{pid}/cwd')
    except OSError:
      continue
    if int(pid) == os.getpid() or not any('pytest' in a for a in args):
      continue
    inside = lambda p: os.path.abspath(os.path.join(cwd, p)).startswith(REPO + os.sep)
    if (cwd + os.sep).startswith(REPO + os.sep) or any(inside(a) for a in args if a):
      found.append(f'{pid}: {" ".join(args).strip()}')
  return found


@contextlib.contextmanager
def run_lock():
  digest = hashlib.sha1(REPO.encode()).hexdigest()[:12]
  path = os.path.join(tempfile.gettempdir(), f'vit_jax_mutate_{digest}.lock')
  with open(path, 'w') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise SystemExit(f'error: another mutation run on {REPO} holds {path}') from None
    yield


def validate(muts) -> None:
  """Every mutation names a covered file and text found there exactly once; all the
  mutations that do not are named at once (code moves on, the list must follow)."""
  ids = [m.id for m in muts]
  errors = [f'mutation id {i} used twice' for i in sorted({i for i in ids if ids.count(i) > 1})]
  for m in muts:
    if m.file not in listing.COVER and not m.tests:
      errors.append(f'{m.id}: {m.file} has no test files in COVER')
      continue
    n = open(os.path.join(REPO, m.file)).read().count(m.find)
    if n != 1:
      errors.append(f'{m.id}: {m.find!r} occurs {n} times in {m.file} (must be once)')
    if '\n' in m.find or m.find == m.replace:
      errors.append(f'{m.id}: a mutation changes one line')
  if errors:
    raise ValueError('\n  '.join(['the mutation list does not fit the code:'] + errors))


def run_tests(copy: str, tests: list[str], timeout: float) -> tuple[int | None, str]:
  """(exit status or None on timeout, last lines) of pytest on `tests` inside the copy."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [copy, os.path.join(copy, 'tests')] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
      PYTHONDONTWRITEBYTECODE='1')
  cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', '-p',
         'no:randomly', '--no-header', *tests]
  proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    return None, proc.communicate()[0]
  except BaseException:       # Ctrl-C: stop the tests we started, then go on unwinding
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise


def first_failure(out: str) -> str:
  """The first test pytest's summary names as failed, else its last line."""
  for line in out.splitlines():
    m = re.match(r'(FAILED|ERROR) (\S+\.py\S*)', line)
    if m:
      return m.group(2)[:160]
  return (out.strip().splitlines() or [''])[-1][:160]


def mutate_one(copy: str, m, timeout: float) -> Outcome:
  path = os.path.join(copy, m.file)
  original = open(path).read()
  t0 = time.time()
  try:
    with open(path, 'w') as f:
      f.write(original.replace(m.find, m.replace, 1))
    rc, out = run_tests(copy, m.tests or listing.COVER[m.file], timeout)
  finally:
    with open(path, 'w') as f:
      f.write(original)
  seconds = time.time() - t0
  if rc is None:
    return Outcome(m, TIMEOUT, seconds, f'no result in {timeout:.0f} s')
  if rc == 0:
    return Outcome(m, EQUIVALENT if m.equivalent else SURVIVED, seconds, m.equivalent)
  if rc == 1:
    return Outcome(m, KILLED, seconds, first_failure(out))
  return Outcome(m, ERROR, seconds, f'pytest exit {rc}: {first_failure(out)}')


def report(outcomes: list[Outcome], wall: float, of: int | None = None) -> str:
  """The markdown report; `of`: the number selected, when the run is not through yet."""
  by_file = {}
  for o in outcomes:
    by_file.setdefault(o.mutation.file, []).append(o)
  done = (f'{len(outcomes)} mutants' if of in (None, len(outcomes)) else
          f'{len(outcomes)} of {of} mutants so far')
  lines = ['# Mutation testing', '',
           f'`python tests/mutate.py` ({done}, {wall / 60:.0f} min on this '
           'machine). Each mutant is one line changed in a copy of the tree, tested by the '
           'files tests/mutations.py maps its module to.', '',
           '| module | mutants | killed | equivalent | survived | timeout / error |',
           '|---|---|---|---|---|---|']
  for file, group in by_file.items():
    count = lambda s: sum(o.status == s for o in group)
    lines.append(f'| `{file}` | {len(group)} | {count(KILLED)} | {count(EQUIVALENT)} | '
                 f'{count(SURVIVED)} | {count(TIMEOUT) + count(ERROR)} |')
  for title, wanted in (('Survivors (no test tells them from the code)', (SURVIVED,)),
                        ('Equivalent mutants (why no test can tell)', (EQUIVALENT,)),
                        ('Timeouts and errors', (TIMEOUT, ERROR))):
    rows = [o for o in outcomes if o.status in wanted]
    lines += ['', f'## {title}', '']
    if not rows:
      lines.append('None.')
      continue
    for o in rows:
      m = o.mutation
      lines.append(f'- **{m.id}** `{m.file}`: `{m.find}` -> `{m.replace}` ({m.what})'
                   + (f': {o.detail}' if o.detail else ''))
  lines += ['', '## Every mutant', '', '| id | mutation | status | s | first failing test |',
            '|---|---|---|---|---|']
  for o in outcomes:
    m = o.mutation
    detail = o.detail if o.status != EQUIVALENT else 'equivalent (above)'
    lines.append(f'| {m.id} | {m.what} | {o.status} | {o.seconds:.0f} | '
                 f'{detail.replace("|", "/")} |')
  return '\n'.join(lines) + '\n'


def select(args) -> list:
  if args.file:
    tests = args.tests or listing.COVER.get(args.file)
    if not tests:
      raise ValueError(f'--file {args.file}: give --tests (no entry in COVER)')
    return [listing.Mutation('adhoc', args.file, args.find, args.replace, 'ad hoc',
                             tests=tests)]
  muts = listing.MUTATIONS
  if args.module:
    muts = [m for m in muts if any(m.file.startswith(p) for p in args.module)]
  if args.only:
    muts = [m for m in muts if m.id in args.only]
  if not muts:
    raise ValueError('no mutation selected')
  return muts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--module', action='append', default=[],
                      help='only mutations of files under this path (repeatable)')
  parser.add_argument('--only', action='append', default=[], help='a mutation id (repeatable)')
  parser.add_argument('--file', help='an ad hoc mutation: the file')
  parser.add_argument('--find', help='... the text (once in the file)')
  parser.add_argument('--replace', help='... what replaces it')
  parser.add_argument('--tests', nargs='+', help='... the test files (default: COVER)')
  parser.add_argument('--timeout', type=float, default=900.0, help='seconds per mutant')
  parser.add_argument('--no-baseline', action='store_true',
                      help='skip running each test set once unmutated first')
  parser.add_argument('--out', help='write the markdown report here (after every mutant)')
  parser.add_argument('--list', action='store_true', help='print the mutations and exit')
  args = parser.parse_args(argv)
  if args.file and (args.find is None or args.replace is None):
    parser.error('--file needs --find and --replace')
  try:
    muts = select(args)
    validate(muts)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.list:
    for m in muts:
      print(f'{m.id:14s} {m.file}: {m.find!r} -> {m.replace!r}  ({m.what})')
    return 0
  busy = other_pytests()
  if busy:
    print('error: pytest is running on this tree; mutate when it is done:\n  ' +
          '\n  '.join(busy), file=sys.stderr)
    return 2
  outcomes, t0 = [], time.time()
  with run_lock(), tempfile.TemporaryDirectory(prefix='vit_jax_mutate_') as copy:
    copy_repo(copy)
    if not args.no_baseline:
      for tests in sorted({tuple(sorted(m.tests or listing.COVER[m.file])) for m in muts}):
        rc, out = run_tests(copy, list(tests), args.timeout)
        if rc != 0:
          print(f'error: the unmutated tree fails {" ".join(tests)}: {first_failure(out)}',
                file=sys.stderr)
          return 2
        print(f'baseline passes: {" ".join(tests)}', flush=True)
    for i, m in enumerate(muts, 1):
      o = mutate_one(copy, m, args.timeout)
      outcomes.append(o)
      print(f'[{i}/{len(muts)}] {m.id}: {o.status} ({o.seconds:.0f} s) {o.detail}', flush=True)
      if args.out:   # after every mutant: a run stopped part-way leaves what it found
        with open(args.out, 'w') as f:
          f.write(report(outcomes, time.time() - t0, of=len(muts)))
  survivors = [o.mutation.id for o in outcomes if o.status == SURVIVED]
  print(f'{len(outcomes)} mutants: {len(survivors)} survived' +
        (f' ({", ".join(survivors)})' if survivors else ''))
  return 1 if survivors else 0


if __name__ == '__main__':
  sys.exit(main())
