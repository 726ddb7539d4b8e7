"""SIGTERM during training: noticed between steps, acted on with a checkpoint of the step."""
import signal
import sys
import threading
import time

import jax
from jax.experimental import multihost_utils

from vit_jax.train import checkpoint


class PreemptionWatch:
  """SIGTERM sets a flag that the train loop reads between steps.

  With several processes, JAX's preemption sync (started by
  jax.distributed.initialize, which listens for SIGTERM itself) picks one step
  for all of them, so that every process saves the same state.
  """

  def __init__(self):
    self.requested = False
    self.at = None               # time.monotonic() of the first SIGTERM
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if not self.requested:
      self.requested, self.at = True, time.monotonic()

  def since(self) -> str:
    """How long ago the signal came, for the message (single process only)."""
    return '' if self.at is None else f'; {time.monotonic() - self.at:.1f} s after the signal'

  def between_epochs(self) -> bool:
    """A SIGTERM that came outside the steps (start-up, evaluation, saving): one process
    acts on it at the epoch boundary; several wait for the next step's sync point."""
    return self.requested and jax.process_count() == 1

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def resume(preempt_mngr, mngr, abstract_state, steps_per_epoch: int):
  """(state, data_state, finished epochs, progress of the epoch so far) from
  checkpoints/preempted, or None. Only a mid-epoch checkpoint newer than the last
  epoch checkpoint is used. Steps are train steps (micro-steps with gradient
  accumulation); progress is the dict the loop saved (its 'train_losses' one per step)."""
  step = preempt_mngr.latest_step()
  if step is None:
    return None
  if step <= (mngr.latest_step() or 0) * steps_per_epoch:
    return None   # written before the crash that also left a newer epoch checkpoint
  try:
    state, data_state, progress = checkpoint.restore(preempt_mngr, step, abstract_state,
                                                     with_progress=True)
  except Exception as e:  # a checkpoint cut short by the preemption itself
    print(f'warning: preemption checkpoint {preempt_mngr.directory}/{step} is unreadable '
          f'({type(e).__name__}); resuming from the last epoch checkpoint',
          file=sys.stderr, flush=True)
    return None
  epoch = progress['epoch']
  print(f'resumed from {preempt_mngr.directory} at step {step} (epoch {epoch}, step '
        f'{len(progress["train_losses"])} of {steps_per_epoch})', flush=True)
  return state, data_state, epoch - 1, dict(progress)


def drop_superseded(preempt_mngr, mngr, steps_per_epoch: int) -> None:
  """Delete preemption checkpoints that a finished epoch checkpoint has overtaken."""
  latest = (mngr.latest_step() or 0) * steps_per_epoch
  for step in preempt_mngr.all_steps():
    if step <= latest:
      preempt_mngr.delete(step)
