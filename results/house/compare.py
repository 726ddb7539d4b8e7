"""Compares the metrics.csv of the four quick variants of two runs of run_quick.sh:
every column but the timings must be equal as written (8 significant digits).

  python results/house/compare.py BEFORE AFTER
"""
import csv
import sys

VARIANTS = ('vanilla', 'register', 'sdpa_gated', 'value_gated')
TIMINGS = {'epoch_time_s', 'images_per_s', 'compile_s', 'device_hours'}


def rows(root: str, variant: str) -> list[dict]:
  with open(f'{root}/{variant}/metrics.csv', newline='') as f:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]


def main(before: str, after: str) -> int:
  equal = True
  for v in VARIANTS:
    a, b = rows(before, v), rows(after, v)
    same = a == b
    equal &= same
    print(f'{v}: {len(a)} vs {len(b)} epochs, {len(a[0])} columns compared: '
          f'{"identical" if same else "DIFFERENT"}; final val_acc1 {a[-1]["val_acc1"]} vs '
          f'{b[-1]["val_acc1"]}')
  return 0 if equal else 1


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:3]))
