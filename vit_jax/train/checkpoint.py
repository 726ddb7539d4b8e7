"""orbax checkpoints in workdir/checkpoints: train state + what fixes the data order.

One manager, keyed by optimizer update (a checkpoint's step is the number of updates it
holds): each epoch's checkpoint, whose metrics name the epoch and its val_acc1, and the
one a SIGTERM writes mid-epoch (metrics {}). The data item is samplers.BatchOrder.state()
(record count, global batch, seed, repeats): with the train state's step it says exactly
where the data stream resumes, whatever the number of processes or loader workers.

Kept: the latest, every `every_epochs`-th epoch, and the best by val_acc1; orbax deletes the rest as the run saves, a mid-epoch checkpoint once a
later one is written. Readers that choose by epoch (analysis, evaluation, export, the
teacher) go through saved_epochs.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from vit_jax import models
from vit_jax.train import faults


def _async_options() -> ocp.AsyncOptions:
  """The step's folders are made in the saving thread. orbax otherwise makes them in a thread
  of their own, and its writer threads wait (coordination timeout, 300 s) for its 'made'
  signal: a full disk at the mkdir left them waiting, holding the process after its end."""
  return ocp.AsyncOptions(create_directories_asynchronously=False)


def _val_acc1(metrics: dict) -> float:
  """What 'best' ranks by; a mid-epoch checkpoint (no evaluation) ranks last."""
  return metrics.get('val_acc1', float('-inf'))


def _epoch(metrics, step: int) -> int | None:
  """The epoch a checkpoint ends, from its metrics; None mid-epoch (no evaluation). One
  written before steps counted updates has no 'epoch': its step is the epoch."""
  if not isinstance(metrics, dict) or 'val_acc1' not in metrics:
    return None
  return int(metrics.get('epoch', step))


@dataclasses.dataclass
class EveryNEpochs:
  """orbax preservation policy: the checkpoint of every n-th epoch."""
  n: int

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    epochs = [_epoch(c.metrics, c.step) for c in checkpoints]
    return [e is not None and e % self.n == 0 for e in epochs]


def manager(workdir: str, every_epochs: int, async_save: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoints. With async_save, save() returns once the arrays are copied off
  the devices and the files are written in the background while training goes on."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(1),
      EveryNEpochs(every_epochs),
      pp.BestN(get_metric_fn=_val_acc1, n=1),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                         best_fn=_val_acc1, best_mode='max',
                                         enable_async_checkpointing=async_save,
                                         async_options=_async_options(),
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options, item_names=('state', 'data'))


# id(manager) -> (step, the step before it, orbax's writer threads of that save)
_IN_FLIGHT: dict[int, tuple] = {}
_FAILED: dict[int, set] = {}      # id(manager) -> steps whose save failed
WRITER_JOIN_S = 120   # at most this long for the writers of a failed save to stop
# After a failed save, how long its folder must stay gone: tensorstore's writers (C++
# threads, which nothing here can join) re-make the folders they write to.
SETTLE_S = 1.0


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict, metrics: dict,
         wait: bool = True, fault: str = 'epoch_checkpoint') -> None:
  """Write one step (in the background unless `wait`); `metrics`: an epoch's {'epoch',
  'val_acc1'}, {} mid-epoch. A failed write (a full disk) raises OSError naming what is
  still intact, here or at the next save() / finish()."""
  finish(mngr)
  items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
  previous, before = mngr.latest_step(), set(threading.enumerate())
  try:
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics)
  except Exception as e:  # orbax and tensorstore wrap OSError in their own types
    _IN_FLIGHT[id(mngr)] = (step, previous, _writers(before))
    _failed(mngr, e)
  _IN_FLIGHT[id(mngr)] = (step, previous, _writers(before))
  faults.point(fault)
  if wait:
    finish(mngr)


def finish(mngr: ocp.CheckpointManager) -> None:
  """Wait for the manager's save in flight, if any."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    _failed(mngr, e)
  _IN_FLIGHT.pop(id(mngr), None)


def close(mngr: ocp.CheckpointManager) -> None:
  """Close the manager; a save that failed was reported by finish(), which orbax would
  raise again here. Its folder is removed once more: tensorstore's writers (not Python
  threads, so not joined) may have re-made it after the first removal."""
  try:
    mngr.close()
  except Exception:  # the same failure, already one line
    pass
  for step in _FAILED.pop(id(mngr), ()):
    _remove_unfinished(mngr, step, settle_s=SETTLE_S)


def _remove_unfinished(mngr: ocp.CheckpointManager, step, settle_s: float = 0.0) -> None:
  """Free what a half-written step took (process 0: the folder is shared). With settle_s:
  again, until no writer has re-made it for that long (at most WRITER_JOIN_S)."""
  if jax.process_index() != 0:
    return
  start = quiet_since = time.monotonic()
  while True:
    found = [n for n in os.listdir(mngr.directory) if n.startswith(f'{step}.orbax-checkpoint-tmp')]
    for name in found:
      shutil.rmtree(os.path.join(mngr.directory, name), ignore_errors=True)
    now = time.monotonic()
    quiet_since = now if found else quiet_since
    if now - quiet_since >= settle_s or now - start > WRITER_JOIN_S:
      return
    time.sleep(0.05)


def _writers(before: set) -> list:
  """orbax's writer threads started since `before`: one per item (and per array chunk)."""
  return [t for t in threading.enumerate()
          if t not in before and type(t).__module__.startswith('orbax.')]


def _failed(mngr: ocp.CheckpointManager, e: BaseException):
  step, previous, writers = _IN_FLIGHT.pop(id(mngr), (None, mngr.latest_step(), []))
  # orbax stops waiting at the first writer that fails, or never waits when save() itself
  # raises; the others go on writing into the step's folder. Removing it under them left a
  # *.orbax-checkpoint-tmp folder behind (they re-make the folders they write to).
  for t in writers:
    threading.Thread.join(t, WRITER_JOIN_S)   # orbax's own join() re-raises their errors
  _remove_unfinished(mngr, step)
  _FAILED.setdefault(id(mngr), set()).add(step)
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


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """(state, data_state) of `step`, the state in abstract_state's shapes and shardings (any
  device count).

  A checkpoint written before the state held the epoch's per-step metrics (epoch_metrics)
  was written at an epoch's end, and the next epoch writes all of them anew: it is restored
  with zeros there."""
  blank = getattr(abstract_state, 'epoch_metrics', None)
  if blank is not None and not _holds(mngr, step, 'epoch_metrics'):
    abstract_state = abstract_state.replace(epoch_metrics=None)
  items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  state = restored['state']
  if abstract_state.epoch_metrics is None and blank is not None:
    state = state.replace(epoch_metrics=jax.device_put(jnp.zeros(blank.shape, blank.dtype),
                                                       blank.sharding))
  return state, dict(restored['data'])


def _holds(mngr: ocp.CheckpointManager, step: int, field: str) -> bool:
  """Whether the train state saved at `step` has `field` (read from its metadata)."""
  with _quiet():
    meta = ocp.StandardCheckpointer().metadata(os.path.join(mngr.directory, str(step), 'state'))
  return getattr(meta, 'item_metadata', meta).get(field) is not None


def saved_data_state(step_dir: str) -> dict | None:
  """The data item of one step directory, read without orbax (None if it has none)."""
  path = os.path.join(step_dir, 'data', 'metadata')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def data_mismatch(saved: dict | None, current: dict) -> str | None:
  """One line naming the first setting of the data order that differs, or None."""
  if saved is None:
    return None
  names = dict(global_batch='batch_size', seed='seed', repeats='dataset.repeated_aug',
               num_records='the number of training records')
  for key, name in names.items():
    if key in saved and saved[key] != current[key]:
      return (f'{name} is {current[key]} here but {saved[key]} in the checkpoint, and the data '
              'order depends on it')
  return None


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, start_over: bool = False):
  """(step, state, data_state) of the newest checkpoint that reads back; (0, None, None)
  if there is none.

  An unreadable step (a truncated or half-copied file) gets one warning line and
  is renamed to STEP.unreadable, so that the run falls back to the step before
  it and can later write that step number again. When none reads back the run stops,
  unless `start_over` (config.start_over) says to train again from the start.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return (step,) + restore(mngr, step, abstract_state)
    except Exception as e:  # any decoding or I/O error of this step
      older = [s for s in steps if s < step]
      print(f'warning: checkpoint step {step} in {mngr.directory} is unreadable '
            f'({_reason(e)}); falling back to ' + (f'step {max(older)}' if older else 'none'),
            file=sys.stderr, flush=True)
      _set_aside(mngr, step)
  if steps and not start_over:
    raise OSError(f'no checkpoint in {mngr.directory} reads back (each is set aside as '
                  'STEP.unreadable); to train again from epoch 1 run the same command with '
                  '--config.start_over=True, or use a new --workdir')
  return 0, None, None


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


def saved_epochs(folder: str) -> dict[int, tuple[int, float]]:
  """{epoch: (step, val_acc1)} of the epoch checkpoints in `folder`, read from their metrics
  files (so that a run writing there meanwhile is not disturbed). A mid-epoch checkpoint is
  none of them; one written before steps counted updates (metrics without 'epoch') is the
  epoch its step names."""
  out = {}
  for step in saved_steps(folder):
    try:
      with open(os.path.join(folder, str(step), 'metrics', 'metrics')) as f:
        metrics = json.load(f)
      epoch = _epoch(metrics, step)
      if epoch is not None:
        out[epoch] = (step, float(metrics['val_acc1']))
    except (OSError, ValueError, TypeError):
      continue
  return out


def best_step(folder: str) -> int | None:
  """The step of the epoch checkpoint with the highest val_acc1 (the later among equals),
  else the latest step."""
  scored = [(acc, step) for step, acc in saved_epochs(folder).values()]
  if scored:
    return max(scored)[1]
  steps = saved_steps(folder)
  return steps[-1] if steps else None


def select_step(workdir: str, spec, field: str) -> int:
  """The saved epoch of workdir/checkpoints that `spec` names: 'latest', 'best'
  (best_step) or an epoch number; one-line errors naming `field` (the analysis, the
  evaluation and the export choose their checkpoint so)."""
  folder = os.path.join(workdir, 'checkpoints')
  epochs = saved_epochs(folder)
  if not epochs:
    raise FileNotFoundError(f'workdir {workdir!r} has no checkpoint in checkpoints/; train it '
                            'first (config.trainer=train)')
  spec = str(spec)
  if spec == 'latest':
    return max(epochs)
  if spec == 'best':
    return max((acc, epoch) for epoch, (_, acc) in epochs.items())[1]
  if not spec.isdigit() or int(spec) not in epochs:
    raise ValueError(f'{field}={spec!r}: no such checkpoint in {folder}; saved epochs: '
                     f"{', '.join(map(str, sorted(epochs)))} (or 'latest', 'best')")
  return int(spec)


def epoch_dir(workdir: str, epoch: int) -> str:
  """The checkpoint folder of a saved epoch of workdir (select_step's)."""
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.join(folder, str(saved_epochs(folder)[epoch][0]))


def require_model(step_dir: str, model, what: str, advice: str = '') -> None:
  """The one check that a checkpoint holds the params `model` builds (a resumed workdir, a
  teacher, an analysed run): ValueError '<what>: <first difference>[; <advice>]'."""
  mismatch = param_mismatch(step_dir, models.abstract_params(model))
  if mismatch:
    raise ValueError(f'{what}: {mismatch}' + (f'; {advice}' if advice else ''))


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


# Which weights of a train state to read: the trained params, or their EMA (config.ema).
WEIGHTS = {'raw': 'params', 'ema': 'ema_params'}


def _state_tree(step_dir: str) -> dict:
  with _quiet():
    meta = ocp.StandardCheckpointer().metadata(os.path.join(os.path.abspath(step_dir), 'state'))
  return dict(getattr(meta, 'item_metadata', meta))


def has_ema(step_dir: str) -> bool:
  """Whether a saved train state holds EMA weights (a run with config.ema.decay > 0)."""
  return bool(jax.tree_util.tree_leaves(_state_tree(step_dir).get('ema_params')))


def has_accumulator(step_dir: str) -> bool:
  """Whether a saved optimizer state is optax.MultiSteps' (config.grad_accum_steps > 1)."""
  opt = _state_tree(step_dir).get('opt_state')
  return isinstance(opt, dict) and 'acc_grads' in opt


def require_weights(step_dir: str, weights: str, field: str) -> None:
  """ValueError in one line unless `weights` is in WEIGHTS and the checkpoint has them."""
  if weights not in WEIGHTS:
    raise ValueError(f'{field}={weights!r} is not one of {tuple(WEIGHTS)}')
  if weights == 'ema' and not has_ema(step_dir):
    raise ValueError(f"{field}='ema' but checkpoint {step_dir!r} holds no EMA weights (its run "
                     "had config.ema.decay=0); use 'raw'")


def restore_params(step_dir: str, weights: str = 'raw'):
  """The params (or, weights='ema', their EMA) of a saved train state, as stored (no
  target tree needed)."""
  with _quiet():
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(step_dir), 'state'))
  return restored[WEIGHTS[weights]]
