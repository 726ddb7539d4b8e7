"""metrics.csv: one row per epoch, rewritten atomically so no epoch repeats or is lost."""
import csv
import os

from vit_jax.train import faults

# val_loss: softmax cross-entropy on the labels for every model (DeiT's evaluate());
# val_objective: the training loss function on the unmixed validation labels.
COLUMNS = ('epoch', 'train_loss', 'val_loss', 'val_acc1', 'val_acc5', 'lr',
           'l2_norm_mean', 'l2_norm_std', 'l2_outlier_ratio', 'epoch_time_s', 'images_per_s',
           'val_objective')


def read(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def write(path: str, rows: list[dict]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  faults.point('metrics')
  os.replace(tmp, path)


def append(path: str, row: dict, keep_through_epoch: int) -> None:
  """Keep rows of epochs <= keep_through_epoch, then add `row`."""
  rows = [r for r in read(path) if int(r['epoch']) <= keep_through_epoch]
  write(path, rows + [{k: _fmt(row[k]) for k in COLUMNS}])


def _fmt(v):
  return f'{v:.8g}' if isinstance(v, float) else v
