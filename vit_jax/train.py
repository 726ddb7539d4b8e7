"""Training and evaluation: a jitted, data-parallel train step over a device mesh."""
import functools
import os
import signal
import sys
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from vit_jax import checkpoint
from vit_jax import losses
from vit_jax import metrics_io
from vit_jax import models
from vit_jax import optim
from vit_jax import teacher
from vit_jax import token_norms
from vit_jax.data import augment
from vit_jax.data.augment import normalize
from vit_jax.data import imagefolder
from vit_jax.data import pipeline
from vit_jax.data import sources


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  bad_step: jax.Array   # first step whose loss or gradient was not finite; -1 if none


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,),
                       devices=devices)


def train_step(state: TrainState, batch, teacher_params=None, *, model, tx, config, base_rng,
               teacher_model=None):
  """One optimizer step on a global batch; returns the new state and metrics.

  A step whose loss or gradient is not finite is not applied, and neither is
  any later one: `bad_step` records it and the host stops the run.
  """
  rng = jax.random.fold_in(base_rng, state.step)
  rng, aug_rng = jax.random.split(rng)
  targets = losses.smooth_labels(
      jax.nn.one_hot(batch['label'], config.dataset.num_classes), config.loss.label_smoothing)
  images, targets = augment.augment_batch(aug_rng, batch['image'], targets, config)
  base = losses.batch_loss(config.loss)
  teacher_logits = None
  if teacher_model is not None:
    teacher_logits = jax.lax.stop_gradient(
        teacher_model.apply({'params': teacher_params}, images)[0].astype(jnp.float32))

  def objective(params):
    logits, out = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    if getattr(model, 'distillation', False):
      return losses.deit_objective(out['cls_logits'], out['dist_logits'], targets, teacher_logits,
                                   base=base, kind=config.teacher.kind,
                                   alpha=config.teacher.alpha, tau=config.teacher.tau)
    return base(logits, targets)

  loss, grads = jax.value_and_grad(objective)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  apply = finite & (state.bad_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step))
  return new_state, {'loss': loss, 'grad_norm': grad_norm}


def eval_step(params, batch, *, model, config):
  """Sums over the real (mask) examples of a padded batch.

  'loss' is softmax cross-entropy on the labels for every model, BCE-trained ones
  included, as DeiT's evaluate() computes it; 'objective' is the training loss
  function (config.loss: label smoothing, BCE binarisation) on the unmixed labels.
  """
  logits, _ = model.apply({'params': params}, normalize(batch['image'], config.dataset))
  labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, config.dataset.num_classes)
  nll = losses.softmax_xent_per_example(logits, onehot)
  objective = losses.per_example_loss(config.loss)(
      logits, losses.smooth_labels(onehot, config.loss.label_smoothing))
  return {'loss': (nll * mask).sum(), 'objective': (objective * mask).sum(),
          'acc1': (losses.topk_correct(logits, labels, 1) * mask).sum(),
          'acc5': (losses.topk_correct(logits, labels, 5) * mask).sum(), 'count': mask.sum()}


def probe_norms(params, images, *, model, config):
  """token_norms.patch_token_norms of the probe images: {'output': (B, N), 'layers': (L, B, N)}."""
  _, out = model.apply({'params': params}, normalize(images, config.dataset), capture=True)
  return token_norms.patch_token_norms(out)


class Trainer:
  """Holds the compiled steps and shardings of one config on one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, teacher=None):
    """teacher: None, or (model, params) of a frozen teacher run inside the train step."""
    self.config = config
    self.mesh = make_mesh() if mesh is None else mesh
    n_dev = self.mesh.devices.size
    for name in ('batch_size', 'eval_batch_size'):
      if config[name] % n_dev:
        raise ValueError(f'{name}={config[name]} is not divisible by the {n_dev} devices')
    self.model = models.build_model(config.model, config.dataset.num_classes, config.dtype)
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    self.init_rng, self.base_rng = jax.random.split(jax.random.key(config.seed))
    self.teacher_model, teacher_params = teacher if teacher is not None else (None, None)
    self.teacher_params = (None if teacher_params is None else
                           jax.device_put(teacher_params, self.replicated))

  def setup(self, steps_per_epoch: int) -> TrainState:
    c = self.config
    self.lr_fn = optim.schedule(c.optim, c.batch_size, steps_per_epoch, c.total_epochs)
    self.tx = optim.build(c.optim, self.lr_fn)

    def init(rng):
      params = models.init_params(self.model, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params), bad_step=jnp.full((), -1, jnp.int32))

    abstract = jax.eval_shape(init, self.init_rng)
    self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx, config=c,
                          base_rng=self.base_rng, teacher_model=self.teacher_model),
        in_shardings=(self.state_sharding, self.data_sharding, self.replicated),
        out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
    self.jitted_step = step   # for .lower(): the benchmark reads XLA's cost and memory analyses
    self.train_step = lambda state, batch: step(state, batch, self.teacher_params)
    self.eval_step = jax.jit(functools.partial(eval_step, model=self.model, config=c),
                             in_shardings=(self.state_sharding.params, self.data_sharding),
                             out_shardings=self.replicated)
    self.probe = jax.jit(functools.partial(probe_norms, model=self.model, config=c),
                         in_shardings=(self.state_sharding.params, self.data_sharding),
                         out_shardings=self.replicated)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_sharding)
    return self._init(self.init_rng)

  def global_batch(self, local: dict) -> dict:
    """Process-local rows -> one global array sharded over the data axis."""
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local.items()}

  def _local_rows(self, batch: dict) -> dict:
    n = jax.process_count()
    rows = len(next(iter(batch.values()))) // n
    i = jax.process_index()
    return {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}

  def evaluate(self, params, source) -> dict:
    totals = None
    for batch in pipeline.eval_batches(source, self.config.eval_batch_size,
                                       image_size=sources.eval_crop(self.config.dataset),
                                       crop_ratio=self.config.dataset.eval_crop_ratio):
      sums = self.eval_step(params, self.global_batch(self._local_rows(batch)))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {'val_loss': float(totals['loss']) / count,
            'val_acc1': 100.0 * float(totals['acc1']) / count,
            'val_acc5': 100.0 * float(totals['acc5']) / count,
            'val_objective': float(totals['objective']) / count}

  def probe_batch(self, source) -> dict:
    n = self.config.probe.num_images
    n_dev = self.mesh.devices.size
    n = max(n_dev, n - n % n_dev)
    batch = next(pipeline.eval_batches(source, n, limit=n,
                                       image_size=sources.eval_crop(self.config.dataset),
                                       crop_ratio=self.config.dataset.eval_crop_ratio))
    return self.global_batch(self._local_rows({'image': batch['image']}))['image']


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the current step was written, and running again resumes."""


class PreemptionWatch:
  """SIGTERM sets a flag that the train loop reads between steps.

  With several processes, JAX's preemption sync (started by
  jax.distributed.initialize, which listens for SIGTERM itself) picks one step
  for all of them, so that every process saves the same state.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _resume_preempted(preempt_mngr, mngr, trainer, data_iter, steps_per_epoch):
  """(state, finished epochs, losses of the steps done since) from checkpoints/preempted, or None.

  Only a mid-epoch checkpoint newer than the last epoch checkpoint is used.
  """
  step = preempt_mngr.latest_step()
  if step is None:
    return None
  if step <= (mngr.latest_step() or 0) * steps_per_epoch:
    return None   # written before the crash that also left a newer epoch checkpoint
  fresh = data_iter.get_state()
  try:
    state, progress = checkpoint.restore(preempt_mngr, step, trainer.abstract_state, data_iter,
                                         with_progress=True)
  except Exception as e:  # a checkpoint cut short by the preemption itself
    data_iter.set_state(fresh)
    print(f'warning: preemption checkpoint {preempt_mngr.directory}/{step} is unreadable '
          f'({type(e).__name__}); resuming from the last epoch checkpoint',
          file=sys.stderr, flush=True)
    return None
  epoch = progress['epoch']
  print(f'resumed from {preempt_mngr.directory} at step {step} (epoch {epoch}, step '
        f'{len(progress["train_losses"])} of {steps_per_epoch})', flush=True)
  return state, epoch - 1, progress['train_losses']


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epoch: int | None = None) -> dict:
  """Train from scratch, or resume from workdir's latest checkpoint; returns the last row.

  `stop_after_epoch` ends this invocation early (checkpoint written), as a
  time-limited job would; running again resumes.
  """
  is_main = jax.process_index() == 0
  train_src = sources.get(config.dataset, 'train')
  val_src = sources.get(config.dataset, 'val')
  teacher_pair = None
  if config.teacher.kind != 'none':
    teacher_pair = teacher.load(config.teacher, config.dataset.num_classes)
  trainer = Trainer(config, teacher=teacher_pair)
  per_process = config.batch_size // jax.process_count()
  steps_per_epoch = len(train_src) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={config.batch_size} is larger than the '
                     f'{len(train_src)} training images')
  state = trainer.setup(steps_per_epoch)
  loader = pipeline.train_loader(train_src, config.dataset, per_process, config.seed)
  data_iter = iter(loader)

  os.makedirs(os.path.join(workdir, 'l2_norms', 'layers'), exist_ok=True)
  mngr = checkpoint.manager(workdir, config.checkpoint_every_epochs)
  preempt_mngr = checkpoint.preempt_manager(workdir)
  start_epoch, done_losses = 0, []
  resumed = _resume_preempted(preempt_mngr, mngr, trainer, data_iter, steps_per_epoch)
  if resumed:
    state, start_epoch, done_losses = resumed
  else:
    start_epoch, restored = checkpoint.restore_latest(mngr, trainer.abstract_state, data_iter)
    if restored is not None:
      state = restored
      logging.info('Resumed from epoch %d', start_epoch)
      print(f'resumed from {workdir}/checkpoints at epoch {start_epoch}', flush=True)
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main,
                                                asynchronous=False)
  n_params = models.count_params(state.params)
  print(f'model: {n_params:,} parameters; {steps_per_epoch} steps/epoch of '
        f'{config.batch_size} on {trainer.mesh.devices.size} device(s)', flush=True)
  probe = trainer.probe_batch(val_src)
  csv_path = os.path.join(workdir, 'metrics.csv')

  row = {}
  watch = PreemptionWatch()
  for epoch in range(start_epoch + 1, config.total_epochs + 1):
    t0 = time.perf_counter()
    step_metrics = [{'loss': np.float32(l)} for l in done_losses]
    for i in range(len(done_losses), steps_per_epoch):
      step = (epoch - 1) * steps_per_epoch + i
      if watch.reached(step):
        losses = [float(m['loss']) for m in jax.device_get(step_metrics)]
        checkpoint.save(preempt_mngr, step, state, data_iter,
                        progress={'epoch': epoch, 'train_losses': losses})
        watch.close()
        raise Preempted(f'preempted: SIGTERM at step {step} (epoch {epoch}, {i} of '
                        f'{steps_per_epoch} steps); checkpoint written to '
                        f'{preempt_mngr.directory}/{step}; run the same command to resume')
      state, m = trainer.train_step(state, trainer.global_batch(next(data_iter)))
      step_metrics.append(m)
    done_losses = []
    step_metrics = jax.device_get(step_metrics)
    skipped = imagefolder.UNREADABLE.take()
    if skipped:
      print(f'epoch {epoch}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}',
            flush=True)
    bad_step = int(state.bad_step)
    if bad_step >= 0:
      raise FloatingPointError(
          f'non-finite loss or gradient at step {bad_step} (epoch {epoch}); the step was not '
          f'applied and the last good checkpoint (epoch {mngr.latest_step()}) is kept')
    train_time = time.perf_counter() - t0
    row = {'epoch': epoch,
           'train_loss': float(np.mean([m['loss'] for m in step_metrics])),
           **trainer.evaluate(state.params, val_src),
           'lr': float(trainer.lr_fn(epoch * steps_per_epoch - 1))}
    norms = jax.device_get(trainer.probe(state.params, probe))
    row.update(token_norms.stats(norms['output'], config.probe))
    row['epoch_time_s'] = time.perf_counter() - t0
    row['images_per_s'] = steps_per_epoch * config.batch_size / train_time
    if is_main:
      np.save(os.path.join(workdir, 'l2_norms', f'epoch{epoch}.npy'), norms['output'])
      if 'layers' in norms:
        np.save(os.path.join(workdir, 'l2_norms', 'layers', f'epoch{epoch}.npy'), norms['layers'])
      metrics_io.append(csv_path, row, keep_through_epoch=epoch - 1)
      writer.write_scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
    print(f"epoch {epoch:3d}/{config.total_epochs} | train loss {row['train_loss']:.4f} | "
          f"val loss {row['val_loss']:.4f} acc1 {row['val_acc1']:.2f}% acc5 {row['val_acc5']:.2f}% | "
          f"lr {row['lr']:.2e} | {row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s",
          flush=True)
    checkpoint.save(mngr, epoch, state, data_iter, {'val_acc1': row['val_acc1']})
    for step in preempt_mngr.all_steps():   # superseded by the epoch's checkpoint
      preempt_mngr.delete(step)
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      break
  watch.close()
  writer.flush()
  mngr.close()
  preempt_mngr.close()
  if row:
    print(f"final validation top-1: {row['val_acc1']:.2f}% (epoch {row['epoch']})", flush=True)
  return row
