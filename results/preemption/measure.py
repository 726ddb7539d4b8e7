"""How soon a full-size run on this CPU acts on SIGTERM (issue 13, part 8).

  python results/preemption/measure.py > results/preemption/measure.log

For each trainer at full size (ViT-S/16 at 224 with the DeiT-III recipe; DeiT-S with its
frozen ResNet-50 teacher in the step; the ResNet-50 teacher itself), on an ImageFolder of
256 JPEGs (500x375) made here, batch 8: the run is started, SIGTERM is sent in the middle
of its second epoch, and the time until it exits (code 75, checkpoint written) is measured
from outside; the run's own message says how long after the signal it acted. The step
time of the same config is measured in-process beforehand, so the two can be compared.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from vit_jax import config_lib  # noqa: E402
from vit_jax.bench import data as bench_data  # noqa: E402
from vit_jax.train import checkpoint  # noqa: E402
from vit_jax.train import steps  # noqa: E402

CLASSES = 4


def overrides(data_dir: str) -> dict:
  return {'dataset.data_dir': data_dir, 'dataset.num_classes': CLASSES, 'dataset.workers': 0,
          'batch_size': 8, 'eval_batch_size': 8, 'probe.num_images': 8, 'total_epochs': 20}


def apply(c, over: dict):
  for key, value in over.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def untrained_teacher(workdir: str, data_dir: str) -> None:
  c = apply(config_lib.load('teacher_resnet'), overrides(data_dir))
  trainer = steps.Trainer(c)
  state = trainer.setup(steps_per_epoch=1)
  mngr = checkpoint.manager(workdir, 1)
  checkpoint.save(mngr, 1, state, {'seed': 0}, {'val_acc1': 0.0})
  mngr.close()


def step_seconds(c, steps: int = 3) -> float:
  """Median time of one compiled train step of this config (synthetic uint8 batch)."""
  trainer = steps.Trainer(c)
  teacher = None
  if c.teacher.kind != 'none':
    from vit_jax.train import teacher as teacher_lib
    teacher = teacher_lib.load(c.teacher, c.dataset.num_classes)
    trainer = steps.Trainer(c, teacher=teacher)
  state = trainer.setup(steps_per_epoch=32)
  rng = np.random.default_rng(0)
  batch = trainer.global_batch({
      'image': rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8),
      'label': rng.integers(0, CLASSES, (8,)).astype(np.int32)})
  state, m = trainer.train_step(state, batch)
  float(m['loss'])
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    float(m['loss'])
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def preempt(args: list[str]) -> dict:
  proc = subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = []
  for line in proc.stdout:                 # the first epoch's line: compiled, steady state
    out.append(line)
    if line.startswith('epoch   1/'):
      break
  epoch_s = float(re.search(r'\| ([\d.]+)s$', line.strip()).group(1))
  time.sleep(epoch_s / 2)                  # the middle of epoch 2
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=900)[0]
  took = time.monotonic() - sent
  out = ''.join(out) + rest
  message = next((l for l in out.splitlines() if l.startswith('preempted:')), '')
  return {'returncode': proc.returncode, 'seconds_to_exit': took, 'message': message,
          'step': int(m.group(1)) if (m := re.search(r'at step (\d+)', message)) else None}


def main():
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, 'in')
    bench_data.jpeg_folder(data, 256, n_val=16, classes=CLASSES)
    untrained_teacher(os.path.join(tmp, 'teacher'), data)
    runs = {
        'vanilla (ViT-S/16, DeiT-III recipe)': ('vanilla', {}),
        'deit_distill (DeiT-S/16 + ResNet-50 teacher)': (
            'deit_distill', {'teacher.checkpoint': os.path.join(tmp, 'teacher')}),
        'teacher_resnet (ResNet-50)': ('teacher_resnet', {}),
    }
    for name, (config, extra) in runs.items():
      over = {**overrides(data), **extra}
      step = step_seconds(apply(config_lib.load(config), over))
      args = ['--config', f'configs/{config}.py', '--workdir', os.path.join(tmp, config)]
      args += [f'--config.{k}={v}' for k, v in over.items()]
      r = preempt(args)
      print(f"{name}: step {step:.2f} s; SIGTERM -> exit {r['returncode']} in "
            f"{r['seconds_to_exit']:.1f} s ({r['seconds_to_exit'] / step:.1f} steps); "
            f"{r['message']}", flush=True)


if __name__ == '__main__':
  main()
