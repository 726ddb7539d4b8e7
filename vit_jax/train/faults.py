"""Named points of the training loop where a test can make the process fail on purpose.

`VIT_JAX_FAULT=<point>:<n>[:<signal>][,...]` sends this process the signal (KILL by
default, or another by name: TERM, STOP) the n-th time (1-based) it passes `point`, so
that a test can stop a run at an exact instant, e.g. while a checkpoint is half written,
and check what the next run makes of it. Unset (always, outside tests), a point costs one
environment lookup.

Points: 'step' (after a train step is dispatched), 'epoch_checkpoint' (while the epoch's
checkpoint is being written), 'metrics' (metrics.csv written aside, not yet in place),
'epoch_end' (the epoch's checkpoint begun, in the background; the mid-epoch checkpoint it
overtakes not yet deleted), 'preempt_checkpoint' (while the checkpoint a SIGTERM asks for
is being written), 'start' (main's start-up, after the checks, before any work).
"""
import os
import signal

POINTS = ('step', 'epoch_checkpoint', 'metrics', 'epoch_end', 'preempt_checkpoint', 'start')
_hits: dict[str, int] = {}


def point(name: str) -> None:
  spec = os.environ.get('VIT_JAX_FAULT')
  if not spec:
    return
  _hits[name] = _hits.get(name, 0) + 1
  for fault in spec.split(','):
    target, n, *sig = fault.split(':')
    if target == name and _hits[name] == int(n):
      os.kill(os.getpid(), getattr(signal, f'SIG{sig[0] if sig else "KILL"}'))
