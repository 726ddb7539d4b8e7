"""Exit codes of `python -m vit_jax.main` (and the tools beside it), which
launch/autorestart.sh acts on:

  0               done;
  ERROR (2)       one `error: ...` line: bad input or a fault a retry would meet again;
  PREEMPTED (75)  EX_TEMPFAIL: stopped by SIGTERM after writing a checkpoint; run the
                  same command again to resume;
  anything else   a crash, resumable from the last checkpoint.
"""
import signal
import sys
import time

ERROR = 2
PREEMPTED = 75


def fail(message: str):
  """The one way a command-line tool stops on bad input: `error: message` on stderr, exit
  ERROR (sys.exit with a string would exit 1, which reads as a crash)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(ERROR)


class Preempted(Exception):
  """SIGTERM arrived and the run stopped where running again resumes (exit PREEMPTED)."""


class Sigterm:
  """SIGTERM noted, not acted on: main installs this before anything else, so that a signal
  during the start-up (imports, checks, compilation) is not lost; main, or the training loop
  at its next step, then stops with exit PREEMPTED. One process only: with several, JAX's
  preemption sync handles SIGTERM once jax.distributed.initialize has run."""

  def __init__(self):
    self.at = None           # time.monotonic() of the first SIGTERM
    self._previous = None

  @property
  def installed(self) -> bool:
    return self._previous is not None

  def install(self) -> None:
    self._previous = signal.signal(signal.SIGTERM, self._note)

  def _note(self, signum, frame):
    del signum, frame
    if self.at is None:
      self.at = time.monotonic()

  @property
  def requested(self) -> bool:
    return self.at is not None

  def since(self) -> str:
    """How long ago the signal came, for the message."""
    return '' if self.at is None else f'; {time.monotonic() - self.at:.1f} s after the signal'

  def uninstall(self) -> None:
    """Back to what SIGTERM did before (the default: end the process), the signal forgotten."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    self.at = None


SIGTERM = Sigterm()
