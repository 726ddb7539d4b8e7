"""One tiny training run shared by the fault and multi-host tests, as CLI flags and as a config."""
import csv
import functools
import os
import tempfile

import jax

from vit_jax import config_lib
from vit_jax.data import sources
from vit_jax.train import loop

# configs/vanilla.py:quick shrunk to two blocks; batch 4 gives 375 steps per epoch,
# long enough to be interrupted mid-epoch. Every epoch's checkpoint is kept.
# No warmup: with the quick config's two warmup epochs (and DeiT's one-epoch lag) both
# epochs would train at warmup_lr 1e-6, and a resume that skipped steps could not show.
OVERRIDES = {'model.depth': 2, 'model.width': 64, 'model.num_heads': 4, 'batch_size': 4,
             'checkpoint_every_epochs': 1, 'total_epochs': 2, 'optim.warmup_epochs': 0.0}
STEPS_PER_EPOCH = len(sources.digits('train', 16)) // OVERRIDES['batch_size']
# Compiled steps are cached on disk between the runs of a session (and its subprocesses).
XLA_CACHE = os.path.join(tempfile.gettempdir(), 'vit_jax_tests_xla_cache')
ENV = {'JAX_COMPILATION_CACHE_DIR': XLA_CACHE, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
       'JAX_PLATFORMS': 'cpu'}
jax.config.update('jax_compilation_cache_dir', XLA_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

KEYS = ('train_loss', 'val_loss', 'val_acc1', 'val_acc5', 'l2_norm_mean')


def args(workdir, **more) -> list[str]:
  """Flags for python -m vit_jax.main."""
  flags = ['--config', 'configs/vanilla.py:quick', '--workdir', str(workdir)]
  return flags + [f'--config.{k}={v}' for k, v in {**OVERRIDES, **more}.items()]


def config(**more):
  c = config_lib.load('vanilla', 'quick')
  for key, value in {**OVERRIDES, **more}.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))


@functools.lru_cache(maxsize=2)
def reference(**more) -> tuple:
  """metrics.csv rows of one uninterrupted single-process run (made once per session)."""
  workdir = tempfile.mkdtemp(prefix='tiny_reference_')
  loop.train_and_evaluate(config(**more), workdir)
  return tuple(rows(workdir))


def assert_same_metrics(got: list[dict], want=None, tol=1e-6) -> None:
  want = reference() if want is None else want
  assert [int(r['epoch']) for r in got] == [int(r['epoch']) for r in want]
  for a, b in zip(got, want):
    for key in KEYS:
      assert abs(float(a[key]) - float(b[key])) <= tol, (a['epoch'], key, a[key], b[key])
