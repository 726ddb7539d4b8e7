"""SIGTERM during training: noticed between optimizer updates, acted on with a checkpoint."""
import threading

import jax
from jax.experimental import multihost_utils

from vit_jax import exits


class PreemptionWatch:
  """Whether a SIGTERM asks the loop to stop before update `step`.

  One process: the flag main set up before anything else (exits.SIGTERM; installed here
  when the loop runs without main, as in tests). Several: JAX's preemption sync (started by
  jax.distributed.initialize, which listens for SIGTERM itself) picks one update for all of
  them, so that every process saves the same state.
  """

  def __init__(self):
    self._owns = False
    if (jax.process_count() == 1 and not exits.SIGTERM.installed
        and threading.current_thread() is threading.main_thread()):
      exits.SIGTERM.install()
      self._owns = True

  def since(self) -> str:
    return exits.SIGTERM.since()

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return exits.SIGTERM.requested

  def close(self) -> None:
    if self._owns:
      exits.SIGTERM.uninstall()
      self._owns = False
