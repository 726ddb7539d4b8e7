r"""`python -m vit_jax.bench peer`: the vanilla :fmnist recipe trained here and by timm + torch.

  python -m vit_jax.bench peer --seeds 0,1,2 --peer_root runs/peer \
      --out results/fashion_mnist/peer.json

Each round (one per seed) trains the recipe of `--peer_config` twice on the real
Fashion-MNIST: ours through `python -m vit_jax.main` (its own workdir under --peer_root,
a finished one is read, not retrained), then timm's VisionTransformer of the same shape
with an ordinary torch loop. The torch side is the recipe as far as timm and torchvision
have it: DeiT-III's crop (RandomCrop with reflect padding), flip, 3-Augment (one of
grayscale / solarize / PIL Gaussian blur) and ColorJitter on PIL images, timm's
RepeatAugSampler, Mixup / CutMix, BCE on targets binarised as DeiT-III's engine.py does,
timm's LAMB (its parameter groups: no decay nor trust ratio on 1-D parameters and
tokens; its own gradient clipping at 1.0), CosineLRScheduler per update, stochastic
depth and LayerScale. Both sides read the same data set into memory and use no loader
processes. Reported per side: the best and final test top-1 (mean +- sample std over the
seeds) and whole-epoch images per second (the training images over the epoch's wall
time, evaluation included, epochs after the first), measured in the same rounds.
"""
import json
import os
import random
import subprocess
import sys
import time

from absl import flags
import numpy as np

from vit_jax import config_lib
from vit_jax.analysis import scoreboard
from vit_jax.data import fashion_mnist as fm
from vit_jax.train import metrics_io

_CONFIG = flags.DEFINE_string('peer_config', 'vanilla:fmnist', '`bench peer`: NAME:ARG.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], '`bench peer`: one round per seed.')
_ROOT = flags.DEFINE_string('peer_root', 'runs/peer', '`bench peer`: workdirs of our side.')
_EPOCHS = flags.DEFINE_integer('peer_epochs', 0, '`bench peer`: epochs (0 = the config\'s).')


def config():
  name, _, arg = _CONFIG.value.partition(':')
  c = config_lib.load(name, arg)
  if _EPOCHS.value:
    c.total_epochs = _EPOCHS.value
  return name, arg, c


def ours(name: str, arg: str, c, seed: int) -> dict:
  """Our side through the CLI; its metrics.csv per epoch."""
  workdir = os.path.join(_ROOT.value, 'ours', f'seed={seed}')
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config', f'configs/{name}.py:{arg}',
         '--workdir', workdir, f'--config.seed={seed}', f'--config.total_epochs={c.total_epochs}']
  t0 = time.perf_counter()
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  if not rows or int(rows[-1]['epoch']) < c.total_epochs:
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    with open(workdir + '.log', 'a') as log:
      subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  return {'command': ' '.join(cmd[1:]), 'wall_s': time.perf_counter() - t0,
          'images_per_epoch': (60000 // c.batch_size) * c.batch_size,
          'val_acc1': [float(r['val_acc1']) for r in rows],
          'epoch_s': [float(r['epoch_time_s']) for r in rows]}


class ThreeAugment:
  """DeiT-III's 3-Augment on a PIL image: one of grayscale, solarize (at 128) or a Gaussian
  blur of radius uniform in [0.1, 2], chosen uniformly."""

  def __call__(self, img):
    from PIL import ImageFilter, ImageOps
    choice = random.randrange(3)
    if choice == 0:
      return ImageOps.grayscale(img).convert('RGB')
    if choice == 1:
      return ImageOps.solarize(img, 128)
    return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def timm_side(c, seed: int) -> dict:
  """The recipe with timm and torch, an ordinary loop; top-1 and wall time per epoch."""
  import timm.data
  import timm.optim
  import timm.scheduler
  from timm.data.distributed_sampler import RepeatAugSampler
  from timm.models.vision_transformer import VisionTransformer
  import torch
  import torchvision.transforms as T
  from PIL import Image

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(seed)
  np.random.seed(seed)
  random.seed(seed)
  d, a, m, o = c.dataset, c.augment, c.model, c.optim
  normalize = [T.ToTensor(), T.Normalize(d.mean, d.std)]
  train_tf = T.Compose([T.RandomCrop(d.image_size, padding=d.random_crop_padding,
                                     padding_mode=d.crop_padding_mode),
                        T.RandomHorizontalFlip(), ThreeAugment(),
                        T.ColorJitter(a.color_jitter, a.color_jitter, a.color_jitter),
                        *normalize])
  eval_tf = T.Compose(normalize)

  class Images(torch.utils.data.Dataset):
    def __init__(self, split, tf):
      self.images, self.labels = fm.load(d.data_dir, split)
      self.tf = tf

    def __len__(self):
      return len(self.labels)

    def __getitem__(self, i):
      return self.tf(Image.fromarray(self.images[i]).convert('RGB')), int(self.labels[i])

  train = Images('train', train_tf)
  sampler = RepeatAugSampler(train, num_replicas=1, rank=0, num_repeats=d.repeated_aug)
  loader = torch.utils.data.DataLoader(train, batch_size=c.batch_size, sampler=sampler,
                                       drop_last=True, num_workers=0)
  test = torch.utils.data.DataLoader(Images('val', eval_tf), batch_size=c.eval_batch_size)
  model = VisionTransformer(
      img_size=m.image_size, patch_size=m.patch_size, num_classes=d.num_classes,
      embed_dim=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      qkv_bias=m.qkv_bias, init_values=m.layerscale_init, no_embed_class=True,
      drop_path_rate=m.drop_path_rate)
  opt = timm.optim.create_optimizer_v2(model, opt='lamb', lr=o.lr, weight_decay=o.weight_decay,
                                       betas=(o.b1, o.b2), eps=o.eps)
  steps = len(loader)
  sched = timm.scheduler.CosineLRScheduler(
      opt, t_initial=c.total_epochs * steps, lr_min=o.min_lr, warmup_t=int(o.warmup_epochs * steps),
      warmup_lr_init=o.warmup_lr, t_in_epochs=False)
  mix = timm.data.Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix,
                        switch_prob=a.mix_switch_prob, label_smoothing=c.loss.label_smoothing,
                        num_classes=d.num_classes)
  bce = torch.nn.BCEWithLogitsLoss()
  out = {'val_acc1': [], 'epoch_s': [], 'images_per_epoch': steps * c.batch_size}
  updates = 0
  for epoch in range(c.total_epochs):
    t0 = time.perf_counter()
    sampler.set_epoch(epoch)
    model.train()
    for x, y in loader:
      x, target = mix(x, y)
      target = target.gt(c.loss.bce_target_threshold).type(target.dtype)  # DeiT-III engine.py
      loss = bce(model(x), target)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      updates += 1
      sched.step_update(num_updates=updates)
    model.eval()
    correct = 0
    with torch.no_grad():
      for x, y in test:
        correct += int((model(x).argmax(-1) == y).sum())
    out['epoch_s'].append(time.perf_counter() - t0)
    out['val_acc1'].append(100.0 * correct / len(test.dataset))
    print(f'timm seed {seed} epoch {epoch + 1}/{c.total_epochs}: top-1 '
          f'{out["val_acc1"][-1]:.2f}%, {out["epoch_s"][-1]:.1f} s', flush=True)
  return out


def _stats(values):
  mean, std = scoreboard.mean_std(values)
  return {'mean': mean, 'std': std, 'values': [float(v) for v in values]}


def summary(rounds: list) -> dict:
  """Per side: best and final top-1 and whole-epoch images/s over the rounds."""
  out = {}
  for side in ('ours', 'timm'):
    runs = [r[side] for r in rounds if side in r]
    if not runs:
      continue
    speed = [r['images_per_epoch'] / float(np.median(r['epoch_s'][1:] or r['epoch_s']))
             for r in runs]
    out[side] = {'best_val_acc1': _stats([max(r['val_acc1']) for r in runs]),
                 'final_val_acc1': _stats([r['val_acc1'][-1] for r in runs]),
                 'epoch_images_per_s': _stats(speed)}
  if 'ours' in out and 'timm' in out:
    out['speed_ratio_ours_over_timm'] = [
        o / t for o, t in zip(out['ours']['epoch_images_per_s']['values'],
                              out['timm']['epoch_images_per_s']['values'])]
  return out


def run(save=lambda results: None) -> dict:
  import torch._dynamo  # noqa: F401  (before anything loads TensorFlow: see tests/conftest.py)
  name, arg, c = config()
  fm.check_files(c.dataset.data_dir)
  results = {'config': _CONFIG.value, 'total_epochs': c.total_epochs, 'rounds': [],
             'cpu': _cpu_name(), 'cpu_count': os.cpu_count()}
  done = finished_rounds(flags.FLAGS['out'].value if 'out' in flags.FLAGS else '', results)
  for seed in (int(s) for s in _SEEDS.value):
    r = {'seed': seed, 'ours': ours(name, arg, c, seed)}
    results['rounds'].append(r)
    save(results)
    r['timm'] = done[seed] if seed in done else timm_side(c, seed)
    results['summary'] = summary(results['rounds'])
    save(results)
    print(json.dumps(results['summary'], indent=1), flush=True)
  return results


def finished_rounds(path: str, results: dict) -> dict:
  """seed -> the timm side already in `path` (--out) from an earlier call with the same
  recipe, so a stopped benchmark goes on from its round (a timm round takes ~20 CPU min)."""
  if not path or not os.path.exists(path):
    return {}
  with open(path) as f:
    old = json.load(f)
  if (old.get('config'), old.get('total_epochs')) != (results['config'],
                                                       results['total_epochs']):
    return {}
  return {r['seed']: r['timm'] for r in old.get('rounds', []) if 'timm' in r}


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return 'unknown'
