import importlib.util
import os
import sys
import time

# torch._dynamo (imported by timm and by transformers whenever torch is installed)
# loads triton, which crashes the process (SIGSEGV) when it is loaded after
# TensorFlow (imported by tensorflow-datasets). Loading it first is safe.
if importlib.util.find_spec('torch') is not None:
  import torch._dynamo  # noqa: F401

from absl import flags
import pytest

# grain worker processes read absl flags; tests do not go through app.run.
flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo():
  return REPO


def run_main(args, env=None, timeout=600):
  """Runs python -m vit_jax.main; returns the CompletedProcess."""
  import subprocess
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, env=full_env, timeout=timeout)


def snapshot(workdir) -> dict:
  """{path under workdir: sha256} of every file: what a refused command must leave as it was."""
  import hashlib
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return out


def run_main_batch(arg_lists, env=None, timeout=600):
  """Like run_main for each argument list, in one interpreter (tests/cli_batch.py: one
  import, a forked child per command line); a list of CompletedProcess, each with
  .seconds (its child's wall time)."""
  import json
  import subprocess
  full_env = dict(os.environ, **(env or {}))
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'cli_batch.py')],
                        input=json.dumps([[str(a) for a in args] for args in arg_lists]),
                        cwd=REPO, capture_output=True, text=True, env=full_env, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = []
  for args, r in zip(arg_lists, json.loads(proc.stdout)):
    done.append(subprocess.CompletedProcess(args, r['returncode'], r['stdout'], r['stderr']))
    done[-1].seconds = r['seconds']
  return done


def wait_until_stopped(pid, proc, timeout=300):
  """Until process `pid` (`proc` or a process under it) is stopped by a signal."""
  from vit_jax import runlock
  end = time.time() + timeout
  while (runlock.proc_stat(pid) or ['gone'])[0] != 'T':
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < end, f'process {pid} never stopped'
    time.sleep(0.05)
