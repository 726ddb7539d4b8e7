"""A training run, counted in optimizer updates as big_vision's loop counts steps.

Each update is grad_accum_steps train steps (micro-batches); every steps_per_epoch updates
an epoch ends, and its events follow: evaluation, the probe norms, a metrics row and a
checkpoint. One checkpoint manager, keyed by update, holds those and the one a SIGTERM
writes between two updates; a resume starts at the update its checkpoint holds.
"""
import os
import time

import jax
import ml_collections
import numpy as np

from vit_jax import files
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
  """One invocation of training in a workdir: restore, then the remaining updates."""

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
    self.per_epoch = self.stream.steps_per_epoch     # optimizer updates
    self.total = config.total_epochs * self.per_epoch
    self.accum = config.grad_accum_steps
    self.state = self.compiled.setup(self.per_epoch,
                                     pretrained.start_params(config, self.imported))
    self.mngr = checkpoint.manager(workdir, config.checkpoint_every_epochs,
                                   config.checkpoint_async)
    self.warm = False            # the first train step of this process compiles it

  def where(self, step: int | None) -> str:
    """A checkpoint's place in the run: 'epoch E', or 'step S (epoch E, i of N steps)'."""
    if step is None:
      return 'none'
    epoch, done = divmod(step, self.per_epoch)
    if not done:
      return f'epoch {epoch} (step {step})'
    return f'step {step} (epoch {epoch + 1}, {done} of {self.per_epoch} steps)'

  def restore(self) -> int:
    """The update this invocation starts at: that of the newest readable checkpoint, or 0."""
    _, restored, data_state = checkpoint.restore_latest(
        self.mngr, self.compiled.abstract_state, self.config.start_over)
    if restored is None:
      if self.imported is not None and self.is_main:
        print(f'starting from the parameters of {self.imported.source!r}; '
              f'{pretrained.head_note(self.config, self.imported)}', flush=True)
      return 0
    mismatch = checkpoint.data_mismatch(data_state, self.stream.order.state())
    if mismatch:
      raise ValueError(f'workdir {self.workdir!r} cannot resume exactly: {mismatch}; use the '
                       'same setting or a new --workdir')
    self.state = restored
    start = int(restored.step) // self.accum
    print(f'resumed from {self.workdir}/checkpoints at {self.where(start)}', flush=True)
    return start

  def prepare_workdir(self) -> None:
    """The folders and config.json of this run."""
    os.makedirs(os.path.join(self.workdir, 'l2_norms', 'layers'), exist_ok=True)
    if self.is_main:
      files.write_text(os.path.join(self.workdir, 'config.json'),
                       self.config.to_json_best_effort(indent=2))
      print(f'model: {models.count_params(self.state.params):,} parameters; '
            f'{self.per_epoch} steps/epoch of {self.config.batch_size} on '
            f'{self.compiled.mesh.devices.size} device(s)', flush=True)

  def updates(self, start: int):
    """(unreadable files, micro-batches) of every update from `start` on: this process's rows
    of the update's global batch in grad_accum_steps equal parts, in order."""
    k = self.accum
    for batch in self.stream.batches(start, self.config.dataset.workers):
      unreadable = batch.pop('unreadable')
      rows = len(batch['label']) // k
      yield unreadable, [{n: v[j * rows:(j + 1) * rows] for n, v in batch.items()}
                         for j in range(k)]

  def train_step(self, part: dict, clock: 'Clock'):
    """One micro-batch through the compiled step; its metrics, not waited for (except the
    process's first step, which compiles and is timed apart)."""
    t = time.perf_counter()
    self.state, m = self.compiled.train_step(self.state, self.compiled.global_batch(part))
    if not self.warm:
      jax.block_until_ready(m)
      self.warm = True
      clock.compile_s, clock.start = time.perf_counter() - t, time.perf_counter()
      self.progress.restart(clock.start)
    else:
      clock.timed += 1
    faults.point('step')
    return m

  def stop(self, update: int, start: int, watch) -> None:
    """SIGTERM before `update`: save the state unless a checkpoint holds it, then stop."""
    epoch, done = divmod(update, self.per_epoch)
    if not done:       # an epoch boundary: that epoch's checkpoint holds this state
      held = (f'the checkpoint of epoch {epoch} stands' if update else 'nothing was trained')
      raise Preempted(f'preempted: SIGTERM at step {update}, before epoch {epoch + 1} (outside '
                      f'the train steps); {held}{watch.since()}; run the same command to resume')
    held = f'the checkpoint of step {update} stands'
    if update > start:
      checkpoint.save(self.mngr, update, self.state, self.stream.order.state(), {},
                      fault='preempt_checkpoint')
      held = f'checkpoint written to {self.mngr.directory}/{update}'
    raise Preempted(f'preempted: SIGTERM at step {update} (epoch {epoch + 1}, {done} of '
                    f'{self.per_epoch} steps); {held}{watch.since()}; run the same command to '
                    'resume')

  def check_finite(self, epoch: int) -> None:
    bad_step = int(self.state.bad_step)
    if bad_step >= 0:
      raise FloatingPointError(
          f'non-finite loss or gradient at step {bad_step // self.accum} (epoch {epoch}); the '
          'step was not applied and the last good checkpoint '
          f'({self.where(self.mngr.latest_step())}) is kept')

  def log_epoch(self, epoch: int, clock: 'Clock', probe, writer) -> dict:
    c, compiled = self.config, self.compiled
    per_step = np.asarray(jax.device_get(self.state.epoch_metrics), np.float64)
    row = {'epoch': epoch, 'train_loss': float(np.mean(per_step[0])),
           'train_acc1': 100.0 * float(np.mean(per_step[1])),
           **evaluation.evaluate(compiled, self.state.params, self.val_src),
           'lr': float(compiled.lr_fn(epoch * self.per_epoch - 1))}
    if self.state.ema_params is not None:
      ema = evaluation.evaluate(compiled, self.state.ema_params, self.val_src)
      row.update({f'{k}_ema': ema[k] for k in ('val_loss', 'val_acc1', 'val_acc5')})
    norms = jax.device_get(compiled.probe(self.state.params, probe))
    row.update(token_norms.stats(norms['output'], c.probe))
    row['epoch_time_s'] = time.perf_counter() - clock.t0
    row['images_per_s'] = (clock.timed * c.batch_size / self.accum / clock.train_s
                           if clock.train_s > 0 else float('nan'))
    row['compile_s'] = clock.compile_s
    self.device_hours += row['epoch_time_s'] * compiled.mesh.devices.size / 3600
    row['device_hours'] = self.device_hours
    if self.is_main:
      for sub, name in (('', 'output'), ('layers', 'layers')):
        if name in norms:
          with files.atomic(os.path.join(self.workdir, 'l2_norms', sub, f'epoch{epoch}.npy'),
                            'wb') as f:
            np.save(f, norms[name])
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

  def train(self, watch, stop_after_epoch: int | None) -> dict:
    """Every remaining update (or those up to stop_after_epoch); the last metrics row.
    At most config.steps_in_flight updates run ahead of the host, so a SIGTERM is acted on
    within about that many."""
    start = self.restore()
    self.prepare_workdir()
    previous = [r for r in metrics_io.read(os.path.join(self.workdir, 'metrics.csv'))
                if int(r['epoch']) == start // self.per_epoch]
    self.device_hours = float(previous[0].get('device_hours') or 0.0) if previous else 0.0
    writer = metrics_io.MetricWriter(self.workdir, self.is_main)
    probe = evaluation.probe_batch(self.compiled, self.val_src)
    clock = Clock(time.perf_counter())    # an epoch's time runs from the previous one's end
    self.progress = Progress(self, clock.t0)
    data, pending, unreadable, row = self.updates(start), [], [], {}
    if start >= self.total and self.is_main:
      print(f'workdir {self.workdir!r} has trained all its {self.config.total_epochs} epochs; '
            'nothing to do (README, "Extending a run")', flush=True)
    for update in range(start, self.total):
      if watch.reached(update):
        self.stop(update, start, watch)
      new, parts = next(data)
      unreadable += new
      pending.append((update, [self.train_step(p, clock) for p in parts]))
      if len(pending) > self.config.steps_in_flight:
        self.progress.update_done(*pending.pop(0), writer)    # waits for that update
      if (update + 1) % self.per_epoch:
        continue
      for done in pending:
        self.progress.update_done(*done, writer)
      pending, epoch = [], (update + 1) // self.per_epoch
      clock.train_s = time.perf_counter() - clock.start
      pipeline.report_unreadable(f'epoch {epoch}', 'replaced', unreadable)
      unreadable = []
      self.check_finite(epoch)
      row = self.log_epoch(epoch, clock, probe, writer)
      checkpoint.save(self.mngr, update + 1, self.state, self.stream.order.state(),
                      {'epoch': epoch, 'val_acc1': row['val_acc1']}, wait=False)
      faults.point('epoch_end')
      clock = Clock(time.perf_counter())
      self.progress.restart(clock.t0)
      if stop_after_epoch is not None and epoch >= stop_after_epoch:
        break
    writer.close()
    return row

  def close(self) -> None:
    """Wait for the save in flight (an epoch checkpoint written in the background is
    finished on every way out: done, preempted, failed), then close the manager."""
    try:
      checkpoint.finish(self.mngr)
    finally:
      checkpoint.close(self.mngr)


class Clock:
  """An epoch's times in this invocation: from the previous epoch's end (t0), of its timed
  train steps (from `start`, after a compilation), and of the compilation."""

  def __init__(self, now: float):
    self.t0 = self.start = now
    self.train_s, self.compile_s, self.timed = 0.0, 0.0, 0


class Progress:
  """Every config.log_every_steps optimizer updates: one line on process 0 (step, epoch
  progress, loss, lr, grad norm, img/s, ETA of the epoch and of the run) and the same
  scalars as TensorBoard events at that step (tags step/*)."""

  def __init__(self, run: Run, now: float):
    self.run, self.every = run, run.config.log_every_steps
    self.restart(now)

  def restart(self, now: float) -> None:
    """Rates are measured from here (after compilation, after each line)."""
    self.t, self.updates = now, 0

  def update_done(self, update: int, metrics: list, writer) -> None:
    """Update `update` (0-based) has run; `metrics`: its micro-steps', on the device: waited
    for here, so that the host runs at most steps_in_flight updates ahead of them."""
    run = self.run
    metrics = jax.device_get(metrics)
    self.updates += 1
    done = update + 1
    if not self.every or done % self.every or not run.is_main:
      return
    loss = float(np.mean([float(m['loss']) for m in metrics]))   # over the update's batch
    grad_norm = float(metrics[-1]['grad_norm'])
    now = time.perf_counter()
    rate = self.updates / (now - self.t) if now > self.t else float('nan')
    images_per_s = rate * run.config.batch_size
    epoch, at = update // run.per_epoch + 1, update % run.per_epoch + 1
    lr = float(run.compiled.lr_fn(update))      # the lr this update was made with
    print(f'step {done}/{run.total} | epoch {epoch} {at}/{run.per_epoch} '
          f'({100 * at / run.per_epoch:.0f}%) | loss {loss:.4f} | lr {lr:.2e} | grad norm '
          f'{grad_norm:.3f} | {images_per_s:.0f} img/s | ETA epoch '
          f'{_duration((run.per_epoch - at) / rate)} run {_duration((run.total - done) / rate)}',
          flush=True)
    writer.write_scalars(done, {'step/loss': loss, 'step/lr': lr, 'step/grad_norm': grad_norm,
                                'step/images_per_s': images_per_s})
    self.restart(now)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  h, rest = divmod(int(round(seconds)), 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}'


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
    row = run.train(watch, stop_after_epoch)
  finally:
    watch.close()
    run.close()
  if row and run.is_main:
    print(f"final validation top-1: {row['val_acc1']:.2f}% (epoch {row['epoch']})", flush=True)
  return row
