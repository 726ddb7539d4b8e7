r"""The Fashion-MNIST studies (results/fashion_mnist.md), one run after another, resumable.

  python results/fashion_mnist/run_all.py [--only s002,s001,s000,best] [--seeds 0,1,2]
      [--no-commit]

Every run is `python -m vit_jax.sweep` (one seed at a time, so the studies fill in
seed by seed) followed by `--config.trainer=analyze` on its best checkpoint. As each
run finishes, its metrics.csv, train.log, analysis.json and analysis.md (and, for seed
0, the analysis plots) are copied to results/fashion_mnist/runs/<study>/<run>/ and
committed with git (those paths only), so nothing measured is lost with the machine. A
run whose results are already committed is skipped; one whose workdir is unfinished
resumes. Run from the repository root.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = 'runs/fmnist'
OUT = 'results/fashion_mnist/runs'
TEACHER = f'{ROOT}/s001/teacher'

# study -> [(run name, config, extra sweep --set arguments)]
STUDIES = {
    's002': [(v, f'configs/{v}.py:fmnist', []) for v in
             ('vanilla', 'register', 'sdpa_gated', 'value_gated')],
    's001': [('student_none', 'configs/deit_distill.py:fmnist', ['teacher.kind=none']),
             ('student_hard', 'configs/deit_distill.py:fmnist',
              ['teacher.kind=hard', f'teacher.checkpoint={TEACHER}'])],
    's000': [('baseline', 'configs/deit_cifar100.py:fmnist', []),
             ('svd', 'configs/deit_svd_cifar100.py:fmnist', [])],
    # The best top-1 a run of ~30 minutes reaches here: vanilla.py:fmnist's model and
    # optimizer without the heavy augmentation (crop and flip only), 32 epochs: the
    # s002 vanilla runs took 53-58 s per epoch here, so 32 fit the ~30 minutes.
    'best': [('light_w64_e32', 'configs/vanilla.py:fmnist',
              ['total_epochs=32', 'augment.mixup=0.0', 'augment.cutmix=0.0',
               'augment.three_augment=False', 'augment.color_jitter=0.0',
               'dataset.repeated_aug=1'])],
}
SEEDS = {'best': (0,)}   # one run; the others take --seeds


def sh(cmd: list[str], log=None) -> None:
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)


def finished(workdir: str) -> bool:
  path = os.path.join(workdir, 'metrics.csv')
  if not os.path.exists(path) or not os.path.exists(os.path.join(workdir, 'config.json')):
    return False
  with open(os.path.join(workdir, 'config.json')) as f:
    total = json.load(f)['total_epochs']
  with open(path) as f:
    lines = f.read().strip().splitlines()
  return len(lines) > 1 and int(lines[-1].split(',')[0]) >= total


def collect(workdir: str, dest: str, plots: bool, commit: bool, message: str,
            info: dict | None = None) -> None:
  os.makedirs(dest, exist_ok=True)
  if info:
    with open(os.path.join(dest, 'run.json'), 'w') as f:
      json.dump(info, f, indent=1)
  for name in ('metrics.csv', 'train.log', 'analysis.json', 'analysis.md', 'config.json',
               'sweep.json'):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), os.path.join(dest, name))
  if plots and os.path.isdir(os.path.join(workdir, 'plots')):
    shutil.copytree(os.path.join(workdir, 'plots'), os.path.join(dest, 'plots'),
                    dirs_exist_ok=True)
  if commit:
    for attempt in range(30):   # another git command may hold the index lock for a moment
      add = subprocess.run(['git', 'add', '--', dest], capture_output=True, text=True)
      done = add.returncode == 0 and subprocess.run(
          ['git', 'commit', '-q', '-m', message, '--', dest], capture_output=True,
          text=True).returncode == 0
      if done:
        break
      time.sleep(10)
    else:
      print(f'warning: could not commit {dest}; commit it by hand', flush=True)


def one(study: str, name: str, config: str, sets: list[str], seed: int, commit: bool) -> None:
  root = f'{ROOT}/{study}/{name}'
  workdir = f'{root}/seed={seed}'
  dest = f'{OUT}/{study}/{name}/seed={seed}'
  if os.path.exists(os.path.join(dest, 'analysis.json')):
    return
  args = [sys.executable, '-m', 'vit_jax.sweep', '--config', config, '--seeds', str(seed),
          '--root', root] + [a for s in sets for a in ('--set', s)]
  t0, load0 = time.time(), os.getloadavg()[0]
  sh(args)
  wall = time.time() - t0
  # The 1-minute load average at the start and the 15-minute one at the end: above ~2 the
  # 2-core machine was shared and the wall time is not this run's alone.
  info = {'command': ' '.join(args[1:]), 'wall_s': wall,
          'load_avg': [load0, os.getloadavg()[2]], 'host_cpus': os.cpu_count()}
  analyze = [sys.executable, '-m', 'vit_jax.main', '--config', config, '--workdir', workdir,
             f'--config.seed={seed}', '--config.trainer=analyze'] + [f'--config.{s}' for s in sets]
  with open(os.path.join(workdir, 'analyze.log'), 'w') as log:
    sh(analyze, log)
  collect(workdir, dest, plots=seed == 0, commit=commit,
          message=f'results/fashion_mnist: {study} {name} seed {seed} ({wall / 60:.1f} min)',
          info=info)


def teacher(commit: bool) -> None:
  dest = f'{OUT}/s001/teacher'
  if os.path.exists(os.path.join(dest, 'metrics.csv')):
    return
  info = None
  if not finished(TEACHER):
    os.makedirs(TEACHER, exist_ok=True)
    cmd = [sys.executable, '-m', 'vit_jax.main', '--config', 'configs/teacher_resnet.py:fmnist',
           '--workdir', TEACHER]
    t0, load0 = time.time(), os.getloadavg()[0]
    with open(os.path.join(TEACHER, 'train.log'), 'a') as log:
      sh(cmd, log)
    info = {'command': ' '.join(cmd[1:]), 'wall_s': time.time() - t0,
            'load_avg': [load0, os.getloadavg()[2]], 'host_cpus': os.cpu_count()}
  collect(TEACHER, dest, plots=False, commit=commit,
          message='results/fashion_mnist: s001 ResNet teacher', info=info)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--only', default='s002,s001,s000')
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--no-commit', action='store_true')
  a = p.parse_args()
  studies = a.only.split(',')
  for seed in (int(s) for s in a.seeds.split(',')):
    for study in studies:
      if study == 's001':
        teacher(not a.no_commit)
      if seed not in SEEDS.get(study, (seed,)):
        continue
      for name, config, sets in STUDIES[study]:
        one(study, name, config, sets, seed, not a.no_commit)


if __name__ == '__main__':
  main()
