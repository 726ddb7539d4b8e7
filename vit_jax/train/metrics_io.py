"""metrics.csv: one row per epoch, rewritten atomically so no epoch repeats or is lost; and
the same scalars (and the per-step ones) as TensorBoard events."""
import csv
import os
import socket
import time

from vit_jax import files
from vit_jax.train import faults

# val_loss: softmax cross-entropy on the labels for every model (DeiT's evaluate());
# val_objective: the training loss function on the unmixed validation labels.
# train_acc1: top-1 of the train steps against the argmax of their (mixed) targets.
# images_per_s: images trained on over the seconds of those steps, compilation excluded,
# summed over the invocations that made the epoch; compile_s: compilation in the epoch;
# device_hours: devices x seconds of every epoch so far (evaluation, saving, compilation
# included), over all invocations. *_ema: the same evaluation of the EMA weights, empty
# when config.ema is off.
COLUMNS = ('epoch', 'train_loss', 'val_loss', 'val_acc1', 'val_acc5', 'lr',
           'l2_norm_mean', 'l2_norm_std', 'l2_outlier_ratio', 'epoch_time_s', 'images_per_s',
           'val_objective', 'train_acc1', 'compile_s', 'device_hours', 'val_loss_ema',
           'val_acc1_ema', 'val_acc5_ema')


def read(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def write(path: str, rows: list[dict]) -> None:
  with files.atomic(path, newline='', before_commit=lambda: faults.point('metrics')) as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)


def append(path: str, row: dict, keep_through_epoch: int) -> None:
  """Keep rows of epochs <= keep_through_epoch, then add `row`."""
  rows = [r for r in read(path) if int(r['epoch']) <= keep_through_epoch]
  write(path, rows + [{k: _fmt(row.get(k, '')) for k in COLUMNS}])


def _fmt(v):
  return f'{v:.8g}' if isinstance(v, float) else v


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
