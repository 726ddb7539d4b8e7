"""Training and evaluation: a jitted, data-parallel train step over a device mesh."""
import functools
import os
import signal
import sys
import threading
import time
from typing import Any

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
from vit_jax import faults
from vit_jax import losses
from vit_jax import metrics_io
from vit_jax import models
from vit_jax import optim
from vit_jax import teacher
from vit_jax import token_norms
from vit_jax.data import augment
from vit_jax.data.augment import normalize
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

  def _eval_batches(self, source, batch_size: int):
    return pipeline.eval_batches(source, batch_size,
                                 image_size=sources.eval_crop(self.config.dataset),
                                 crop_ratio=self.config.dataset.eval_crop_ratio)

  def evaluate(self, params, source) -> dict:
    totals, unreadable = None, []
    for batch in self._eval_batches(source, self.config.eval_batch_size):
      unreadable += batch.pop('unreadable')
      sums = self.eval_step(params, self.global_batch(self._local_rows(batch)))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if jax.process_index() == 0:   # every process reads the whole split
      report_unreadable('evaluation', 'left out', unreadable)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {'val_loss': float(totals['loss']) / count,
            'val_acc1': 100.0 * float(totals['acc1']) / count,
            'val_acc5': 100.0 * float(totals['acc5']) / count,
            'val_objective': float(totals['objective']) / count}

  def probe_batch(self, source):
    """The first probe.num_images readable validation images (a multiple of the devices;
    an unreadable file is passed over, never padded in)."""
    n_dev = self.mesh.devices.size
    n = max(n_dev, self.config.probe.num_images // n_dev * n_dev)
    images = []
    for batch in self._eval_batches(source, n):
      images += list(batch['image'][batch['mask']])
      if len(images) >= n:
        break
    n = len(images) if len(images) < n else n
    if n < n_dev:
      raise ValueError(f'the validation split has {len(images)} readable images, fewer than '
                       f'the {n_dev} devices the probe batch needs')
    images = np.stack(images[:n // n_dev * n_dev])
    return self.global_batch(self._local_rows({'image': images}))['image']


def report_unreadable(where: str, what: str, paths) -> None:
  """One line per run of a loop naming each unreadable file once (this process's share)."""
  paths = sorted(set(paths))
  if paths:
    who = f'process {jax.process_index()}: ' if jax.process_count() > 1 else ''
    print(f'{who}{where}: {what} {len(paths)} unreadable image(s): ' + '; '.join(paths),
          flush=True)


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


def _resume_preempted(preempt_mngr, mngr, trainer, steps_per_epoch):
  """(state, data_state, finished epochs, losses of the steps done since) from
  checkpoints/preempted, or None. Only a mid-epoch checkpoint newer than the last
  epoch checkpoint is used."""
  step = preempt_mngr.latest_step()
  if step is None:
    return None
  if step <= (mngr.latest_step() or 0) * steps_per_epoch:
    return None   # written before the crash that also left a newer epoch checkpoint
  try:
    state, data_state, progress = checkpoint.restore(preempt_mngr, step, trainer.abstract_state,
                                                     with_progress=True)
  except Exception as e:  # a checkpoint cut short by the preemption itself
    print(f'warning: preemption checkpoint {preempt_mngr.directory}/{step} is unreadable '
          f'({type(e).__name__}); resuming from the last epoch checkpoint',
          file=sys.stderr, flush=True)
    return None
  epoch = progress['epoch']
  print(f'resumed from {preempt_mngr.directory} at step {step} (epoch {epoch}, step '
        f'{len(progress["train_losses"])} of {steps_per_epoch})', flush=True)
  return state, data_state, epoch - 1, progress['train_losses']


class Run:
  """One invocation of training in a workdir: restore, then epochs of steps, evaluation,
  probe norms, metrics and checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.is_main = jax.process_index() == 0
    self.train_src = sources.get(config.dataset, 'train')
    self.val_src = sources.get(config.dataset, 'val')
    teacher_pair = None
    if config.teacher.kind != 'none':
      teacher_pair = teacher.load(config.teacher, config.dataset.num_classes)
    self.trainer = Trainer(config, teacher=teacher_pair)
    self.stream = pipeline.TrainStream(self.train_src, config.dataset, config.batch_size,
                                       config.seed)
    self.steps_per_epoch = self.stream.steps_per_epoch
    self.state = self.trainer.setup(self.steps_per_epoch)
    self.mngr = checkpoint.manager(workdir, config.checkpoint_every_epochs,
                                   config.checkpoint_async)
    self.preempt_mngr = checkpoint.preempt_manager(workdir)
    self.save_blocked_s = []     # how long each save held up the loop

  def restore(self) -> tuple[int, list]:
    """(finished epochs, losses of the steps of the next epoch already done)."""
    resumed = _resume_preempted(self.preempt_mngr, self.mngr, self.trainer, self.steps_per_epoch)
    if resumed:
      self.state, data_state, epochs, done = resumed
    else:
      epochs, restored, data_state = checkpoint.restore_latest(self.mngr,
                                                               self.trainer.abstract_state)
      done = []
      if restored is not None:
        self.state = restored
        print(f'resumed from {self.workdir}/checkpoints at epoch {epochs}', flush=True)
    mismatch = checkpoint.data_mismatch(data_state, self.stream.order.state())
    if mismatch:
      raise ValueError(f'workdir {self.workdir!r} cannot resume exactly: {mismatch}; use the '
                       'same setting or a new --workdir')
    return epochs, done

  def save(self, mngr, step: int, **kw) -> None:
    t0 = time.perf_counter()
    if mngr is self.mngr:      # the previous epoch's save is done: drop what it overtook
      checkpoint.finish(mngr)
      self.drop_superseded_preemption()
    checkpoint.save(mngr, step, self.state, self.stream.order.state(), **kw)
    self.save_blocked_s.append(time.perf_counter() - t0)

  def train_epoch(self, epoch: int, done: list, data, watch) -> tuple[list, list]:
    """The epoch's remaining steps; (per-step losses, unreadable files). At most
    config.steps_in_flight steps run ahead of the host, so a SIGTERM is acted on within
    about that many steps."""
    c, spe = self.config, self.steps_per_epoch
    losses_ = [np.float32(l) for l in done]
    pending, unreadable = [], []
    for i in range(len(done), spe):
      step = (epoch - 1) * spe + i
      if watch.reached(step):
        losses_ += [float(l) for l in jax.device_get(pending)]
        self.save(self.preempt_mngr, step, fault='preempt_checkpoint',
                  progress={'epoch': epoch, 'train_losses': [float(l) for l in losses_]})
        watch.close()
        raise Preempted(f'preempted: SIGTERM at step {step} (epoch {epoch}, {i} of {spe} '
                        f'steps); checkpoint written to {self.preempt_mngr.directory}/{step}'
                        f'{watch.since()}; run the same command to resume')
      batch = next(data)
      unreadable += batch.pop('unreadable')
      self.state, m = self.trainer.train_step(self.state, self.trainer.global_batch(batch))
      faults.point('step')
      pending.append(m['loss'])
      if len(pending) > c.steps_in_flight:
        losses_.append(float(pending.pop(0)))      # waits for that step to finish
    return losses_ + [float(l) for l in jax.device_get(pending)], unreadable

  def check_finite(self, epoch: int) -> None:
    bad_step = int(self.state.bad_step)
    if bad_step >= 0:
      raise FloatingPointError(
          f'non-finite loss or gradient at step {bad_step} (epoch {epoch}); the step was not '
          f'applied and the last good checkpoint (epoch {self.mngr.latest_step()}) is kept')

  def log_epoch(self, epoch: int, losses_: list, probe, t0: float, train_time: float,
                writer) -> dict:
    c, spe = self.config, self.steps_per_epoch
    row = {'epoch': epoch, 'train_loss': float(np.mean(losses_)),
           **self.trainer.evaluate(self.state.params, self.val_src),
           'lr': float(self.trainer.lr_fn(epoch * spe - 1))}
    norms = jax.device_get(self.trainer.probe(self.state.params, probe))
    row.update(token_norms.stats(norms['output'], c.probe))
    row['epoch_time_s'] = time.perf_counter() - t0
    row['images_per_s'] = spe * c.batch_size / train_time
    if self.is_main:
      np.save(os.path.join(self.workdir, 'l2_norms', f'epoch{epoch}.npy'), norms['output'])
      if 'layers' in norms:
        np.save(os.path.join(self.workdir, 'l2_norms', 'layers', f'epoch{epoch}.npy'),
                norms['layers'])
      metrics_io.append(os.path.join(self.workdir, 'metrics.csv'), row,
                        keep_through_epoch=epoch - 1)
      writer.write_scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
      print(f"epoch {epoch:3d}/{c.total_epochs} | train loss {row['train_loss']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc1 {row['val_acc1']:.2f}% "
            f"acc5 {row['val_acc5']:.2f}% | lr {row['lr']:.2e} | "
            f"{row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s", flush=True)
    return row

  def close(self) -> None:
    """Wait for the saves in flight (an epoch checkpoint written in the background is
    finished on every way out: done, preempted, failed), then close the managers."""
    try:
      checkpoint.finish(self.mngr)
      checkpoint.finish(self.preempt_mngr)
      self.drop_superseded_preemption()
    finally:
      self.mngr.close()
      self.preempt_mngr.close()

  def drop_superseded_preemption(self) -> None:
    """Delete preemption checkpoints that a finished epoch checkpoint has overtaken."""
    latest = (self.mngr.latest_step() or 0) * self.steps_per_epoch
    for step in self.preempt_mngr.all_steps():
      if step <= latest:
        self.preempt_mngr.delete(step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epoch: int | None = None) -> dict:
  """Train from scratch, or resume from workdir's latest checkpoint; returns the last row.

  `stop_after_epoch` ends this invocation early (checkpoint written), as a
  time-limited job would; running again resumes.
  """
  watch = PreemptionWatch()      # from the start: a SIGTERM during start-up is not lost
  try:
    run = Run(config, workdir)
  except BaseException:
    watch.close()
    raise
  row = {}
  try:
    start_epoch, done = run.restore()
    os.makedirs(os.path.join(workdir, 'l2_norms', 'layers'), exist_ok=True)
    if run.is_main:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    writer = metric_writers.create_default_writer(workdir, just_logging=not run.is_main,
                                                  asynchronous=False)
    if run.is_main:
      print(f'model: {models.count_params(run.state.params):,} parameters; '
            f'{run.steps_per_epoch} steps/epoch of {config.batch_size} on '
            f'{run.trainer.mesh.devices.size} device(s)', flush=True)
    probe = run.trainer.probe_batch(run.val_src)
    data = run.stream.batches(start_epoch * run.steps_per_epoch + len(done),
                              config.dataset.workers)
    for epoch in range(start_epoch + 1, config.total_epochs + 1):
      if watch.between_epochs():
        raise Preempted(f'preempted: SIGTERM before epoch {epoch} (outside the train steps); '
                        f'the checkpoint of epoch {epoch - 1} stands{watch.since()}; run the '
                        'same command to resume')
      t0 = time.perf_counter()
      losses_, unreadable = run.train_epoch(epoch, done, data, watch)
      done = []
      report_unreadable(f'epoch {epoch}', 'replaced', unreadable)
      run.check_finite(epoch)
      row = run.log_epoch(epoch, losses_, probe, t0, time.perf_counter() - t0, writer)
      run.save(run.mngr, epoch, metrics={'val_acc1': row['val_acc1']}, wait=False)
      faults.point('epoch_end')
      if stop_after_epoch is not None and epoch >= stop_after_epoch:
        break
    writer.flush()
  finally:
    watch.close()
    run.close()
  if row and run.is_main:
    print(f"final validation top-1: {row['val_acc1']:.2f}% (epoch {row['epoch']})", flush=True)
  return row
