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
    self.trainer = steps.Trainer(config, teacher=teacher_pair)
    self.stream = pipeline.TrainStream(self.train_src, config.dataset, config.batch_size,
                                       config.seed)
    self.steps_per_epoch = self.stream.steps_per_epoch
    self.state = self.trainer.setup(self.steps_per_epoch,
                                    pretrained.start_params(config, self.imported))
    self.mngr = checkpoint.manager(workdir, config.checkpoint_every_epochs,
                                   config.checkpoint_async)
    self.preempt_mngr = checkpoint.preempt_manager(workdir)
    self.save_blocked_s = []     # how long each save held up the loop

  def restore(self) -> tuple[int, list]:
    """(finished epochs, losses of the steps of the next epoch already done)."""
    resumed = preemption.resume(self.preempt_mngr, self.mngr, self.trainer.abstract_state,
                                self.steps_per_epoch)
    if resumed:
      self.state, data_state, epochs, done = resumed
    else:
      epochs, restored, data_state = checkpoint.restore_latest(self.mngr,
                                                               self.trainer.abstract_state)
      done = []
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
            f'{self.trainer.mesh.devices.size} device(s)', flush=True)

  def save(self, mngr, step: int, **kw) -> None:
    t0 = time.perf_counter()
    if mngr is self.mngr:      # the previous epoch's save is done: drop what it overtook
      checkpoint.finish(mngr)
      preemption.drop_superseded(self.preempt_mngr, self.mngr, self.steps_per_epoch)
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
                writer: 'MetricWriter') -> dict:
    c, spe = self.config, self.steps_per_epoch
    row = {'epoch': epoch, 'train_loss': float(np.mean(losses_)),
           **evaluation.evaluate(self.trainer, self.state.params, self.val_src),
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

  def epochs(self, watch, stop_after_epoch: int | None) -> dict:
    """Every remaining epoch (or up to stop_after_epoch); the last metrics row."""
    start_epoch, done = self.restore()
    self.prepare_workdir()
    writer = MetricWriter(self.workdir, self.is_main)
    probe = evaluation.probe_batch(self.trainer, self.val_src)
    data = self.stream.batches(start_epoch * self.steps_per_epoch + len(done),
                               self.config.dataset.workers)
    row = {}
    t0 = time.perf_counter()   # an epoch's time runs from the previous one's end: all of it
    for epoch in range(start_epoch + 1, self.config.total_epochs + 1):
      if watch.between_epochs():
        raise Preempted(f'preempted: SIGTERM before epoch {epoch} (outside the train steps); '
                        f'the checkpoint of epoch {epoch - 1} stands{watch.since()}; run the '
                        'same command to resume')
      t_steps = time.perf_counter()
      losses_, unreadable = self.train_epoch(epoch, done, data, watch)
      done = []
      pipeline.report_unreadable(f'epoch {epoch}', 'replaced', unreadable)
      self.check_finite(epoch)
      row = self.log_epoch(epoch, losses_, probe, t0, time.perf_counter() - t_steps, writer)
      self.save(self.mngr, epoch, metrics={'val_acc1': row['val_acc1']}, wait=False)
      faults.point('epoch_end')
      t0 = time.perf_counter()
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
      preemption.drop_superseded(self.preempt_mngr, self.mngr, self.steps_per_epoch)
    finally:
      self.mngr.close()
      self.preempt_mngr.close()


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
