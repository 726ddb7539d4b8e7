"""Entry point: python -m vit_jax.main --config configs/register.py[:quick] --workdir DIR."""
import logging as python_logging
import os
import re
import sys
import threading
import warnings

from vit_jax import exits

if __name__ == '__main__':   # before the slow imports: a SIGTERM from here on is noted
  exits.SIGTERM.install()

# TensorFlow is imported only for TensorBoard writing; keep its start-up quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax import distributed
from vit_jax import preflight
from vit_jax import runlock
from vit_jax import trainers
from vit_jax.models import pretrained
from vit_jax.train import faults

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: metrics, checkpoints, events, plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def _one_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  if any(l.startswith('Traceback') for l in lines):  # config file raised: keep its message
    return lines[-1]
  return ' '.join(lines)


def parse_flags(argv):
  """absl flag parsing with every config problem reported in one line."""
  for i, arg in enumerate(argv[1:], 1):
    value = arg.split('=', 1)[1] if arg.startswith('--config=') else (
        argv[i + 1] if arg == '--config' and i + 1 < len(argv) else None)
    if value is not None:
      path = value.split(':', 1)[0]
      if not os.path.isfile(path):
        folder = os.path.dirname(path) or '.'
        choices = sorted(f for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(folder) else []
        sys.exit(f'error: config file {path!r} not found; files in {folder}/: {", ".join(choices) or "none"}')
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError) as e:  # an override names a key the config lacks
    key = re.search(r"'(\w+)", str(e))
    key = key.group(1) if key else str(e)
    hint = re.search(r'Did you mean "(\w+)"', str(e))
    arg = next((a.split('=', 1)[0] for a in argv if a.startswith('--config.') and
                key in a.split('=', 1)[0].split('.')), '--config')
    sys.exit(f'error: unknown config key {key!r} in {arg}' +
             (f'; did you mean {hint.group(1)!r}?' if hint else ''))
  except (flags.Error, ValueError, TypeError) as e:
    sys.exit(f'error: {_one_line(e)}')


def quiet_library_errors() -> None:
  """A failed save (a full disk) is reported by each of orbax's threads, hundreds of lines of
  tracebacks, before the run's one `error:` line says what failed and what is intact. Without
  --verbosity they are left out: orbax's log records below CRITICAL, the exceptions its
  threads end with, and the exceptions Python ignores in threads it did not start
  (tensorstore's callbacks into a closed event loop), and the warning Python gives at exit
  for each coroutine of an abandoned write that never ran (this package has no coroutines of
  its own); a crash of the main thread, or of any other thread, still shows."""
  orbax = f'{os.sep}orbax{os.sep}'
  logging.get_absl_handler().addFilter(
      lambda record: orbax not in record.pathname or record.levelno >= python_logging.CRITICAL)
  thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

  def thread_excepthook(args):
    if not type(args.thread).__module__.startswith('orbax.'):
      thread_hook(args)

  def unraisablehook(args):
    if not isinstance(threading.current_thread(), threading._DummyThread):
      unraisable_hook(args)
  threading.excepthook, sys.unraisablehook = thread_excepthook, unraisablehook
  warnings.filterwarnings('ignore', r"coroutine '.*' was never awaited", RuntimeWarning)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}; use --config.key=value for overrides')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
    quiet_library_errors()
  config = FLAGS.config
  # With init.source, preprocessing fields set on the command line stay the config's.
  pretrained.keep_command_line(config, config_flags.get_override_values(FLAGS['config']))
  try:
    if 'distributed' in config:   # the GPT-2 study's config has none: it runs in one process
      distributed.check(config.distributed)
      distributed.initialize(config.distributed)   # before any other JAX call
    preflight.check(config, FLAGS.workdir)
    use_compilation_cache(config)
    lock = take_lock(config, FLAGS.workdir)
  except (ValueError, OSError) as e:   # OSError: the lock cannot be written (a full disk)
    sys.exit(f'error: {e}')
  logging.info('JAX devices: %s', jax.devices())
  faults.point('start')
  try:
    dispatch(config)
  finally:
    if lock is not None:
      lock.release()


def use_compilation_cache(config) -> None:
  """Compiled programs are kept in config.compilation_cache_dir ('' = not kept), so a run
  that compiles what an earlier one did loads it instead (JAX's persistent cache)."""
  path = config.compilation_cache_dir
  if path:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def take_lock(config, workdir: str):
  """The workdir's run lock, taken once per job (by process 0) after every process has
  passed preflight (which refuses a workdir a live run holds); None for a trainer that
  only reads the workdir."""
  if not trainers.get(config.trainer).writes_workdir:
    return None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('preflight passed')
  if jax.process_index() != 0:
    return None
  return runlock.RunLock(workdir, config.run_lock.lease_s, config.run_lock.renew_s).acquire()


def end_of_start_up(entry) -> None:
  """A SIGTERM that came during the start-up stops the job here, before any work. From here
  on a trainer that acts on it (the training loop, at its next step) keeps the flag; any
  other gets SIGTERM's default back."""
  if exits.SIGTERM.requested:
    raise exits.Preempted(f'preempted: SIGTERM during the start-up, before any work'
                          f'{exits.SIGTERM.since()}; nothing was trained; run the same command '
                          'to resume')
  if not entry.preemptible and jax.process_count() == 1:
    exits.SIGTERM.uninstall()


def dispatch(config):
  """Run config.trainer; its bad-input errors become one line (exit 2), a preemption
  exit 75 (vit_jax/exits.py)."""
  spec = trainers.get(config.trainer)
  try:
    end_of_start_up(spec)
    trainers.function(spec.run)(config, FLAGS.workdir)
  except spec.errors as e:
    sys.exit(f'error: {e}')
  except exits.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(exits.PREEMPTED)


def cli():
  """python -m vit_jax.main: sys.argv parsed and run; an error is one line, exit 2."""
  try:
    app.run(main, flags_parser=parse_flags)
  except SystemExit as e:
    if isinstance(e.code, str):   # sys.exit('error: ...')
      print(e.code, file=sys.stderr, flush=True)
      sys.exit(exits.ERROR)
    raise


if __name__ == '__main__':
  cli()
