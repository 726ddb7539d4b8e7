"""The epochs of a training run: restore, steps, evaluation, probe norms, metrics, checkpoints."""
import os
import socket
import time

import jax
import ml_collections
import numpy as np

from vit_jax import models
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.exits import Preempted
from vit_jax.models import pretrained
from vit_jax.models import token_norms
from vit_jax.train import checkpoint
from vit_jax.train import evaluation
from vit_jax.train import faults
from vit_jax.train import metrics_io
from vit_jax.train import preemption
from vit_jax.train import steps
from vit_jax.train import teacher


class Run:
  """One invocation of training in a workdir: restore, then epochs of steps, evaluation,
  probe norms, metrics and checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.is_main = jax.process_index() == 0
    # A pretrained checkpoint (config.init.source) gives config.model its architecture
    # before any model is built, and a fresh start its parameters.
    self.imported = pretrained.load(config)
    if self.imported is not None and self.is_main:
      print(pretrained.describe(config, self.imported), flush=True)
    self.train_src = sources.get(config.dataset, 'train')
    self.val_src = sources.get(config.dataset, 'val')
    teacher_pair = None
    if config.teacher.kind != 'none':
      teacher_pair = teacher.load(config.teacher, config.dataset.num_classes)
    self.compiled = steps.CompiledSteps(config, teacher=teacher_pair)
    self.stream = pipeline.TrainStream(self.train_src, config.dataset, config.batch_size,
                                       config.seed)
    self.steps_per_epoch = self.stream.steps_per_epoch
    # Train steps (micro-steps) per epoch: grad_accum_steps per optimizer update.
    self.accum = config.get('grad_accum_steps', 1)
    self.micro_per_epoch = self.steps_per_epoch * self.accum
    self.state = self.compiled.setup(self.steps_per_epoch,
                                    pretrained.start_params(config, self.imported))
    self.mngr = checkpoint.manager(workdir, config.checkpoint_every_epochs,
                                   config.checkpoint_async)
    self.preempt_mngr = checkpoint.preempt_manager(workdir)
    self.save_blocked_s = []     # how long each save held up the loop
    self.warm = False            # the first train step of this process compiles it

  def restore(self) -> tuple[int, dict]:
    """(finished epochs, progress of the next epoch's steps already done: train_losses,
    train_acc1s, train_s, images, epoch_s)."""
    resumed = preemption.resume(self.preempt_mngr, self.mngr, self.compiled.abstract_state,
                                self.micro_per_epoch)
    if resumed:
      self.state, data_state, epochs, done = resumed
    else:
      epochs, restored, data_state = checkpoint.restore_latest(self.mngr,
                                                               self.compiled.abstract_state)
      done = {}
      if restored is not None:
        self.state = restored
        print(f'resumed from {self.workdir}/checkpoints at epoch {epochs}', flush=True)
      elif self.imported is not None and self.is_main:
        print(f'starting from the parameters of {self.imported.source!r}; '
              f'{pretrained.head_note(self.config, self.imported)}', flush=True)
    mismatch = checkpoint.data_mismatch(data_state, self.stream.order.state())
    if mismatch:
      raise ValueError(f'workdir {self.workdir!r} cannot resume exactly: {mismatch}; use the '
                       'same setting or a new --workdir')
    return epochs, done

  def prepare_workdir(self) -> None:
    """The folders and config.json of this run."""
    os.makedirs(os.path.join(self.workdir, 'l2_norms', 'layers'), exist_ok=True)
    if self.is_main:
      with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
        f.write(self.config.to_json_best_effort(indent=2))
      print(f'model: {models.count_params(self.state.params):,} parameters; '
            f'{self.steps_per_epoch} steps/epoch of {self.config.batch_size} on '
            f'{self.compiled.mesh.devices.size} device(s)', flush=True)

  def save(self, mngr, step: int, **kw) -> None:
    t0 = time.perf_counter()
    if mngr is self.mngr:      # the previous epoch's save is done: drop what it overtook
      checkpoint.finish(mngr)
      preemption.drop_superseded(self.preempt_mngr, self.mngr, self.micro_per_epoch)
    checkpoint.save(mngr, step, self.state, self.stream.order.state(), **kw)
    self.save_blocked_s.append(time.perf_counter() - t0)

  def micro_batches(self, start: int):
    """This process's rows of every train step from train step `start` on: with
    grad_accum_steps k, global batch s // k split into k equal parts, part s % k."""
    k = self.accum
    data = self.stream.batches(start // k, self.config.dataset.workers)
    if k == 1:
      yield from data
      return
    skip = start % k
    for batch in data:
      unreadable = batch.pop('unreadable')
      rows = len(batch['label']) // k
      for j in range(skip, k):
        part = {name: v[j * rows:(j + 1) * rows] for name, v in batch.items()}
        part['unreadable'] = unreadable if j == skip else ()
        yield part
      skip = 0

  def train_epoch(self, epoch: int, done: dict, data, watch, writer) -> tuple[dict, list]:
    """The epoch's remaining steps; (progress: per-step losses and top-1, seconds and
    images of the timed steps, unreadable files). At most config.steps_in_flight steps
    run ahead of the host, so a SIGTERM is acted on within about that many steps."""
    c, mpe = self.config, self.micro_per_epoch
    p = dict(train_losses=[float(l) for l in done.get('train_losses', [])],
             train_acc1s=[float(a) for a in done.get('train_acc1s', [])],
             train_s=float(done.get('train_s', 0.0)), images=int(done.get('images', 0)),
             epoch_s=float(done.get('epoch_s', 0.0)), compile_s=0.0)
    micro_batch = c.batch_size // self.accum
    pending, unreadable = [], []
    t_start, timed = time.perf_counter(), 0     # the clock of the timed (compiled) steps
    self.progress = Progress(self, epoch, t_start)
    done_steps = len(p['train_losses'])   # an update half accumulated before a preemption
    self.progress.losses = p['train_losses'][done_steps // self.accum * self.accum:]

    def record(i, m):
      p['train_losses'].append(float(m['loss']))
      p['train_acc1s'].append(float(m['acc1']))
      self.progress.step_done(i, m, p, writer)

    for i in range(len(p['train_losses']), mpe):
      step = (epoch - 1) * mpe + i
      if watch.reached(step):
        for j, m in pending:
          record(j, jax.device_get(m))
        p['train_s'] += time.perf_counter() - t_start
        p['images'] += timed * micro_batch
        p['epoch_s'] += time.perf_counter() - self.epoch_t0
        self.save(self.preempt_mngr, step, fault='preempt_checkpoint',
                  progress={k: v for k, v in p.items() if k != 'compile_s'} | {'epoch': epoch})
        watch.close()
        raise Preempted(f'preempted: SIGTERM at step {step} (epoch {epoch}, {i} of {mpe} '
                        f'steps); checkpoint written to {self.preempt_mngr.directory}/{step}'
                        f'{watch.since()}; run the same command to resume')
      batch = next(data)
      unreadable += batch.pop('unreadable')
      t = time.perf_counter()
      self.state, m = self.compiled.train_step(self.state, self.compiled.global_batch(batch))
      if not self.warm:     # compilation (and this one step) is timed apart
        jax.block_until_ready(m)
        self.warm = True
        p['compile_s'] = time.perf_counter() - t
        record(i, jax.device_get(m))
        t_start = time.perf_counter()
        self.progress.restart(t_start)
        faults.point('step')
        continue
      timed += 1
      faults.point('step')
      pending.append((i, m))
      if len(pending) > c.steps_in_flight:
        j, m0 = pending.pop(0)
        record(j, jax.device_get(m0))      # waits for that step to finish
    for j, m in pending:
      record(j, jax.device_get(m))
    p['train_s'] += time.perf_counter() - t_start
    p['images'] += timed * micro_batch
    return p, unreadable

  def check_finite(self, epoch: int) -> None:
    bad_step = int(self.state.bad_step)
    if bad_step >= 0:
      raise FloatingPointError(
          f'non-finite loss or gradient at step {bad_step} (epoch {epoch}); the step was not '
          f'applied and the last good checkpoint (epoch {self.mngr.latest_step()}) is kept')

  def log_epoch(self, epoch: int, p: dict, probe, writer: 'MetricWriter') -> dict:
    c, spe = self.config, self.steps_per_epoch
    row = {'epoch': epoch, 'train_loss': float(np.mean(p['train_losses'])),
           'train_acc1': 100.0 * float(np.mean(p['train_acc1s'])),
           **evaluation.evaluate(self.compiled, self.state.params, self.val_src),
           'lr': float(self.compiled.lr_fn(epoch * spe - 1))}
    if self.state.ema_params is not None:
      ema = evaluation.evaluate(self.compiled, self.state.ema_params, self.val_src)
      row.update({f'{k}_ema': ema[k] for k in ('val_loss', 'val_acc1', 'val_acc5')})
    norms = jax.device_get(self.compiled.probe(self.state.params, probe))
    row.update(token_norms.stats(norms['output'], c.probe))
    row['epoch_time_s'] = p['epoch_s'] + time.perf_counter() - self.epoch_t0
    row['images_per_s'] = p['images'] / p['train_s'] if p['train_s'] > 0 else float('nan')
    row['compile_s'] = p['compile_s']
    self.device_hours += row['epoch_time_s'] * self.compiled.mesh.devices.size / 3600
    row['device_hours'] = self.device_hours
    if self.is_main:
      np.save(os.path.join(self.workdir, 'l2_norms', f'epoch{epoch}.npy'), norms['output'])
      if 'layers' in norms:
        np.save(os.path.join(self.workdir, 'l2_norms', 'layers', f'epoch{epoch}.npy'),
                norms['layers'])
      metrics_io.append(os.path.join(self.workdir, 'metrics.csv'), row,
                        keep_through_epoch=epoch - 1)
      writer.write_scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
      ema = (f" | ema acc1 {row['val_acc1_ema']:.2f}%" if 'val_acc1_ema' in row else '')
      print(f"epoch {epoch:3d}/{c.total_epochs} | train loss {row['train_loss']:.4f} "
            f"acc1 {row['train_acc1']:.2f}% | val loss {row['val_loss']:.4f} acc1 "
            f"{row['val_acc1']:.2f}% acc5 {row['val_acc5']:.2f}%{ema} | lr {row['lr']:.2e} | "
            f"{row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s"
            + (f" (compile {row['compile_s']:.1f}s)" if row['compile_s'] else ''), flush=True)
    return row

  def epochs(self, watch, stop_after_epoch: int | None) -> dict:
    """Every remaining epoch (or up to stop_after_epoch); the last metrics row."""
    start_epoch, done = self.restore()
    self.prepare_workdir()
    previous = [r for r in metrics_io.read(os.path.join(self.workdir, 'metrics.csv'))
                if int(r['epoch']) == start_epoch]
    self.device_hours = float(previous[0].get('device_hours') or 0.0) if previous else 0.0
    writer = MetricWriter(self.workdir, self.is_main)
    probe = evaluation.probe_batch(self.compiled, self.val_src)
    data = self.micro_batches(start_epoch * self.micro_per_epoch +
                              len(done.get('train_losses', [])))
    row = {}
    self.epoch_t0 = time.perf_counter()   # an epoch's time runs from the previous one's end
    for epoch in range(start_epoch + 1, self.config.total_epochs + 1):
      if watch.between_epochs():
        raise Preempted(f'preempted: SIGTERM before epoch {epoch} (outside the train steps); '
                        f'the checkpoint of epoch {epoch - 1} stands{watch.since()}; run the '
                        'same command to resume')
      p, unreadable = self.train_epoch(epoch, done, data, watch, writer)
      done = {}
      pipeline.report_unreadable(f'epoch {epoch}', 'replaced', unreadable)
      self.check_finite(epoch)
      row = self.log_epoch(epoch, p, probe, writer)
      self.save(self.mngr, epoch, metrics={'val_acc1': row['val_acc1']}, wait=False)
      faults.point('epoch_end')
      self.epoch_t0 = time.perf_counter()
      if stop_after_epoch is not None and epoch >= stop_after_epoch:
        break
    writer.close()
    return row

  def close(self) -> None:
    """Wait for the saves in flight (an epoch checkpoint written in the background is
    finished on every way out: done, preempted, failed), then close the managers."""
    try:
      checkpoint.finish(self.mngr)
      checkpoint.finish(self.preempt_mngr)
      preemption.drop_superseded(self.preempt_mngr, self.mngr, self.micro_per_epoch)
    finally:
      self.mngr.close()
      self.preempt_mngr.close()


class Progress:
  """Every config.log_every_steps optimizer updates: one line on process 0 (step, epoch
  progress, loss, lr, grad norm, img/s, ETA of the epoch and of the run) and the same
  scalars as TensorBoard events at that optimizer step (tags step/*)."""

  def __init__(self, run: 'Run', epoch: int, now: float):
    self.run, self.epoch = run, epoch
    self.every = run.config.get('log_every_steps', 0)
    self.restart(now)
    self.losses = []

  def restart(self, now: float) -> None:
    """Rates are measured from here (after compilation)."""
    self.t, self.steps = now, 0

  def step_done(self, i: int, m: dict, p: dict, writer) -> None:
    """Train step i of the epoch (0-based, micro-steps) has finished with metrics m."""
    run, k = self.run, self.run.accum
    self.steps += 1
    self.losses.append(float(m['loss']))
    if (i + 1) % k:
      return
    loss, self.losses = float(np.mean(self.losses)), []   # over the optimizer batch
    update = ((self.epoch - 1) * run.micro_per_epoch + i + 1) // k
    if not self.every or update % self.every or not run.is_main:
      return
    now = time.perf_counter()
    c, spe = run.config, run.steps_per_epoch
    rate = self.steps / (now - self.t) if now > self.t else float('nan')   # train steps / s
    images_per_s = rate * c.batch_size / k
    left_epoch = run.micro_per_epoch - (i + 1)
    left_run = (c.total_epochs - self.epoch) * run.micro_per_epoch + left_epoch
    lr = float(run.compiled.lr_fn(update - 1))      # the lr this update was made with
    grad_norm = float(m['grad_norm'])
    print(f'step {update}/{c.total_epochs * spe} | epoch {self.epoch} '
          f'{(i + 1) // k}/{spe} ({100 * (i + 1) / run.micro_per_epoch:.0f}%) | loss '
          f'{loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | {images_per_s:.0f} img/s | '
          f'ETA epoch {_duration(left_epoch / rate)} run {_duration(left_run / rate)}',
          flush=True)
    writer.write_scalars(update, {'step/loss': loss, 'step/lr': lr, 'step/grad_norm': grad_norm,
                                  'step/images_per_s': images_per_s})
    self.restart(now)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  h, rest = divmod(int(round(seconds)), 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}'


class MetricWriter:
  """Per-epoch scalars as a TensorBoard event file in the workdir (process 0 only).

  Records are framed by TensorBoard's own RecordWriter on a plain file: no TensorFlow.
  (clu's writers import TensorFlow, ~3 s of every start-up; importing it in a thread
  competed for the same two cores and made the first epoch slower, measured; and
  TensorBoard's EventFileWriter imports TensorFlow too wherever it is installed.)
  """

  def __init__(self, workdir: str, is_main: bool):
    self.workdir, self.is_main, self._file, self._records = workdir, is_main, None, None

  def _add(self, **event) -> None:
    from tensorboard.compat.proto import event_pb2
    self._records.write(event_pb2.Event(wall_time=time.time(), **event).SerializeToString())
    self._file.flush()       # on disk each epoch, whatever happens to the run later

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.is_main:
      return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import record_writer
    if self._file is None:
      name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}'
      self._file = open(os.path.join(self.workdir, name), 'wb')
      self._records = record_writer.RecordWriter(self._file)
      self._add(file_version='brain.Event:2')
    self._add(step=step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epoch: int | None = None) -> dict:
  """Train from scratch, or resume from workdir's latest checkpoint; returns the last row.

  `stop_after_epoch` ends this invocation early (checkpoint written), as a
  time-limited job would; running again resumes.
  """
  watch = preemption.PreemptionWatch()   # from the start: a SIGTERM during start-up counts
  try:
    run = Run(config, workdir)
  except BaseException:
    watch.close()
    raise
  try:
    row = run.epochs(watch, stop_after_epoch)
  finally:
    watch.close()
    run.close()
  if row and run.is_main:
    print(f"final validation top-1: {row['val_acc1']:.2f}% (epoch {row['epoch']})", flush=True)
  return row
