"""SIGTERM during training: noticed between optimizer updates, acted on with a checkpoint."""
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Whether a SIGTERM asks the loop to stop before update `step`.

  One process: a flag that SIGTERM sets. Several: JAX's preemption sync (started by
  jax.distributed.initialize, which listens for SIGTERM itself) picks one update for all of
  them, so that every process saves the same state.
  """

  def __init__(self):
    self.at = None               # time.monotonic() of the first SIGTERM
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if self.at is None:
      self.at = time.monotonic()

  def since(self) -> str:
    """How long ago the signal came, for the message (single process only)."""
    return '' if self.at is None else f'; {time.monotonic() - self.at:.1f} s after the signal'

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.at is not None

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
