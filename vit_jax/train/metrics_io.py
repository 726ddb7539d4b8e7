"""metrics.csv: one row per epoch, rewritten atomically so no epoch repeats or is lost."""
import csv
import os

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
