"""What `config.trainer` names: the one table main, preflight and the tests read.

Each entry says which function runs it, which function checks its config and
workdir before any work, whether it writes the workdir (and so holds its run lock),
whether its config is a ViT config (and so gets the ViT checks of preflight), whether it
acts on SIGTERM (a checkpoint and exit 75), and which exceptions are bad input (one
`error:` line, exit 2) rather than crashes. Functions are named as 'module:function' and
imported only when used, so that looking a trainer up costs nothing.
"""
import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of TRAINERS."""
  run: str                       # 'module:function', called as f(config, workdir)
  check: str = ''                # 'module:function', called as f(config, workdir) by preflight
  writes_workdir: bool = True    # holds workdir/run.lock while it runs
  vit_config: bool = True        # a config built on config_lib.base()
  # Acts on SIGTERM: a checkpoint at its next step, exit 75 (vit_jax/exits.py); any other
  # trainer ends as SIGTERM ends a process.
  preemptible: bool = False
  errors: tuple = (ValueError, FileNotFoundError)


TRAINERS = {
    'train': Entry('vit_jax.train.loop:train_and_evaluate', check='vit_jax.train.resume:check',
                   preemptible=True, errors=(FloatingPointError, OSError, ValueError)),
    # Only reads a workdir, so it may run beside the training that writes it (with
    # init.source it analyses an imported model and the workdir is only its output).
    'analyze': Entry('vit_jax.analysis.run:analyze', check='vit_jax.analysis.run:check',
                       writes_workdir=False, errors=()),
    # Writes only its own result files (evaluate_<split>_<epoch>_<weights>.json / .npz,
    # each atomically) and reads finished checkpoints: no run lock, like analyze.
    'evaluate': Entry('vit_jax.train.evaluate:evaluate', check='vit_jax.train.evaluate:check',
                        writes_workdir=False, errors=(ValueError, FileNotFoundError, OSError)),
    'crystallize': Entry('vit_jax.crystallize.run:run', check='vit_jax.crystallize.checks:check',
                           vit_config=False),
}


def get(name: str) -> Entry:
  if name not in TRAINERS:
    raise ValueError(f'trainer={name!r} is not one of {tuple(TRAINERS)}')
  return TRAINERS[name]


def function(ref: str):
  """The function a 'module:function' reference names."""
  module, name = ref.split(':')
  return getattr(importlib.import_module(module), name)
