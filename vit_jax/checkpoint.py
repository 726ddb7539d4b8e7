"""orbax checkpoints in workdir/checkpoints: train state + grain iterator state.

Kept: the latest, every `every_epochs`-th epoch, and the best by val_acc1.
Steps are epoch numbers, so the latest step is the last finished epoch.
"""
import contextlib
import os

from absl import logging
import grain
import jax
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


def save(mngr: ocp.CheckpointManager, epoch: int, state, data_iter, metrics: dict) -> None:
  mngr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)), metrics=metrics)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, epoch: int, abstract_state, data_iter):
  """Restore `epoch` into the shapes/shardings of abstract_state; data_iter is set in place."""
  restored = mngr.restore(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored['state']


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
