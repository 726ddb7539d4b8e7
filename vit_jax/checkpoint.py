"""orbax checkpoints in workdir/checkpoints: train state + grain iterator state.

Kept: the latest, every `every_epochs`-th epoch, and the best by val_acc1.
Steps are epoch numbers, so the latest step is the last finished epoch.
"""
import contextlib
import os
import shutil
import sys

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


def manager(workdir: str, every_epochs: int) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(1),
      pp.EveryNSteps(every_epochs),
      pp.BestN(get_metric_fn=lambda m: m['val_acc1'], n=1),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                         best_fn=lambda m: m['val_acc1'], best_mode='max',
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options, item_names=('state', 'data'))


def preempt_manager(workdir: str) -> ocp.CheckpointManager:
  """checkpoints/preempted: one mid-epoch checkpoint, written on SIGTERM; steps are train steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints', PREEMPTED)), options=options,
      item_names=('state', 'data', 'progress'))


PREEMPTED = 'preempted'


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, metrics: dict | None = None,
         progress: dict | None = None) -> None:
  """Write one step; a failed write (a full disk) raises OSError naming what is still intact."""
  items = dict(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter))
  if progress is not None:
    items['progress'] = ocp.args.JsonSave(progress)
  previous = mngr.latest_step()
  try:
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics)
    mngr.wait_until_finished()
  except Exception as e:  # orbax and tensorstore wrap OSError in their own types
    if jax.process_index() == 0:   # free what the half-written step took
      for name in os.listdir(mngr.directory):
        if name.startswith(f'{step}.orbax-checkpoint-tmp'):
          shutil.rmtree(os.path.join(mngr.directory, name), ignore_errors=True)
    kept = f'step {previous} in {mngr.directory} is intact' if previous is not None else (
        f'no earlier checkpoint in {mngr.directory}')
    raise OSError(f'could not write checkpoint step {step} to {mngr.directory} '
                  f'({_reason(e)}); {kept}') from e


def _reason(e: BaseException) -> str:
  text = ' '.join(str(e).split())
  for known in ('No space left on device', 'Read-only file system', 'Permission denied',
                'Disk quota exceeded'):
    if known in text:
      return known
  return f'{type(e).__name__}: {text[:200]}'


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iter,
            with_progress: bool = False):
  """Restore `step` into the shapes/shardings of abstract_state; data_iter is set in place."""
  items = dict(state=ocp.args.StandardRestore(abstract_state),
               data=grain.checkpoint.CheckpointRestore(data_iter))
  if with_progress:
    items['progress'] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return (restored['state'], restored['progress']) if with_progress else restored['state']


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter):
  """(step, state) of the newest checkpoint that reads back; (0, None) if there is none.

  An unreadable step (a truncated or half-copied file) gets one warning line and
  is renamed to STEP.unreadable, so that the run falls back to the step before
  it and can later write that step number again.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return step, restore(mngr, step, abstract_state, data_iter)
    except Exception as e:  # any decoding or I/O error of this step
      older = [s for s in steps if s < step]
      print(f'warning: checkpoint step {step} in {mngr.directory} is unreadable '
            f'({_reason(e)}); falling back to ' + (f'step {max(older)}' if older else 'none'),
            file=sys.stderr, flush=True)
      _set_aside(mngr, step)
  if steps:
    raise OSError(f'no checkpoint in {mngr.directory} reads back; move the folder away to '
                  'start afresh')
  return 0, None


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> None:
  """Rename an unreadable step to STEP.unreadable; a step that vanished or cannot be
  renamed meanwhile is left as it is, with a warning (the older steps are tried next)."""
  path = os.path.join(str(mngr.directory), str(step))
  if jax.process_index() == 0:
    aside = path + '.unreadable'
    while os.path.exists(aside):
      aside += '_'
    try:
      os.rename(path, aside)
    except OSError as e:
      print(f'warning: could not set checkpoint step {step} aside ({e.strerror}: {path}); '
            'leaving it where it is', file=sys.stderr, flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  mngr.reload()


@contextlib.contextmanager
def _quiet():
  """Reading one item of a step directory directly makes orbax warn that the
  step's metadata file is not inside the item; that is expected here."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def saved_param_shapes(step_dir: str) -> dict:
  """{'path/to/param': shape} of the params saved in one step directory, read from metadata."""
  with _quiet():
    meta = ocp.StandardCheckpointer().metadata(os.path.join(os.path.abspath(step_dir), 'state'))
  tree = getattr(meta, 'item_metadata', meta)['params']
  return {_path(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def saved_steps(folder: str) -> list[int]:
  """Ascending steps of the checkpoints in `folder` (orbax names each by its step)."""
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder)
                if d.isdigit() and os.path.isdir(os.path.join(folder, d, 'state')))


def param_mismatch(step_dir: str, abstract_params) -> str | None:
  """shape_mismatch between the params saved in `step_dir` and those a model expects."""
  return shape_mismatch(saved_param_shapes(step_dir), param_shapes(abstract_params))


def param_shapes(params) -> dict:
  return {_path(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(params)}


def _path(keys) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in keys)


def shape_mismatch(saved: dict, expected: dict) -> str | None:
  """One line describing the first difference between two {path: shape} maps, or None."""
  for path in sorted(set(saved) | set(expected)):
    if path not in saved:
      return f'{path} is missing from the checkpoint (the config expects {expected[path]})'
    if path not in expected:
      return f'the checkpoint has {path} {saved[path]}, which the config does not'
    if saved[path] != expected[path]:
      return f'{path} has shape {saved[path]} in the checkpoint, {expected[path]} in the config'
  return None


def restore_params(step_dir: str):
  """The params of a saved train state, as stored (no target tree needed)."""
  with _quiet():
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(step_dir), 'state'))
  return restored['params']
