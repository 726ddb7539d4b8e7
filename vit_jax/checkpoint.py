"""orbax checkpoints in workdir/checkpoints: train state + grain iterator state.

Kept: the latest, every `every_epochs`-th epoch, and the best by val_acc1.
Steps are epoch numbers, so the latest step is the last finished epoch.
"""
import os

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


def manager(workdir: str, every_epochs: int) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(1),
      pp.EveryNSteps(every_epochs),
      pp.BestN(get_metric_fn=lambda m: m['val_acc1'], n=1),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
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
