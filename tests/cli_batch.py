"""Many `python -m vit_jax.main` command lines for the price of one interpreter start.

The package is imported once here; each command line then runs in a forked child, with
its own sys.argv, absl flags (never parsed in this parent), exit status, stdout and stderr,
through the same vit_jax.main.cli() as `python -m vit_jax.main`. stdin: a JSON list of
argument lists; stdout: a JSON list of {returncode, stdout, stderr, seconds}. Use it for commands
that stop in preflight (a child that trains would work too, but gains nothing).
"""
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit_jax import main as vit_main   # noqa: E402  (before any fork: the import is the cost)


def run_one(args: list[str]) -> dict:
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.time()
    pid = os.fork()
    if pid == 0:                            # the child: a `python -m vit_jax.main` of its own
      code = 1
      try:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = [vit_main.__file__, *args]
        vit_main.cli()
        code = 0
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
      except BaseException:                 # as the interpreter would: traceback, exit 1
        traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    seconds = time.time() - start
    out.seek(0)
    err.seek(0)
    return {'returncode': os.waitstatus_to_exitcode(status), 'stdout': out.read(),
            'stderr': err.read(), 'seconds': seconds}


if __name__ == '__main__':
  print(json.dumps([run_one(a) for a in json.load(sys.stdin)]))
