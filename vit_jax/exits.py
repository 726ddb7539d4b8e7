"""Exit codes of `python -m vit_jax.main` (and the tools beside it), which
launch/autorestart.sh acts on:

  0               done;
  ERROR (2)       one `error: ...` line: bad input or a fault a retry would meet again;
  PREEMPTED (75)  EX_TEMPFAIL: stopped by SIGTERM after writing a checkpoint; run the
                  same command again to resume;
  anything else   a crash, resumable from the last checkpoint.
"""
import sys

ERROR = 2
PREEMPTED = 75


def fail(message: str):
  """The one way a command-line tool stops on bad input: `error: message` on stderr, exit
  ERROR (sys.exit with a string would exit 1, which reads as a crash)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(ERROR)


class Preempted(Exception):
  """SIGTERM arrived and the run stopped where running again resumes (exit PREEMPTED)."""
