"""metrics.csv's training columns against independent computations on the same steps.

One in-process run of the quick config with AdamW and DeiT's epoch schedule (its one-epoch
lag; no warmup; a one-block model, no drop-path, so the training forward is the
evaluation one), 3 epochs of 23 steps, each step's params and batch recorded as
the loop hands them to the train step:

- train_acc1: 100 x the epoch's mean of per-step top-1, each from timm's VisionTransformer
  (our params through convert.to_torch) on torchvision-normalised images, scored by
  timm.utils.accuracy against the labels;
- lr: the lr the epoch trained at, from timm's CosineLRScheduler stepped as DeiT's main.py
  steps it (lr_scheduler.step(epoch) after each epoch);
- val_acc1, val_acc5, val_loss of the last epoch: timm.utils.accuracy (top-1, top-5) and
  torch's cross-entropy of timm's model with the final params over the 297 validation
  images (the last evaluation batch of 128 is padded: padding must not count).
"""
import jax
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler import CosineLRScheduler
from timm.utils import accuracy

import tiny_run   # noqa: F401  (the shared compilation cache)
from vit_jax import config_lib
from vit_jax.data import sources
from vit_jax.models import convert
from vit_jax.train import loop
from vit_jax.train import steps

EPOCHS = 3


def _config():
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=1, width=32, num_heads=2, drop_path_rate=0.0)
  c.update(batch_size=64, total_epochs=EPOCHS)
  c.optim.update(name='adamw', lr=3e-3, warmup_epochs=0.0)
  c.loss.update(name='softmax_xent', label_smoothing=0.0)
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(metrics.csv rows, [(params before the step, the step's batch)], steps per epoch,
  the params after the last step)."""
  records, final = [], []
  real_setup = steps.CompiledSteps.setup

  def setup(self, *args, **kwargs):
    state = real_setup(self, *args, **kwargs)
    inner = self.train_step

    def recorded(state, batch):
      records.append((jax.device_get(state.params), jax.device_get(batch)))
      new_state, metrics = inner(state, batch)
      final[:] = [jax.device_get(new_state.params)]
      return new_state, metrics
    self.train_step = recorded
    return state

  mp = pytest.MonkeyPatch()
  mp.setattr(steps.CompiledSteps, 'setup', setup)
  workdir = str(tmp_path_factory.mktemp('logged'))
  try:
    loop.train_and_evaluate(_config(), workdir)
  finally:
    mp.undo()
  rows = tiny_run.rows(workdir)
  return rows, records, len(records) // EPOCHS, final[0]


def _timm_logits(params, images, c):
  """timm's VisionTransformer with our params, on torchvision-normalised images."""
  m = c.model
  net = VisionTransformer(img_size=m.image_size, patch_size=m.patch_size, embed_dim=m.width,
                          depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                          num_classes=c.dataset.num_classes, init_values=m.layerscale_init,
                          no_embed_class=True).eval()
  net.load_state_dict({k: torch.tensor(v) for k, v in convert.to_torch(params).items()})
  prep = T.Compose([T.ToTensor(), T.Normalize(c.dataset.mean, c.dataset.std)])
  x = torch.stack([prep(img) for img in np.asarray(images, np.uint8)])
  with torch.no_grad():
    return net(x)


def _timm_top1(params, batch, c) -> float:
  labels = torch.from_numpy(np.asarray(batch['label'])).long()
  (top1,) = accuracy(_timm_logits(params, batch['image'], c), labels, topk=(1,))
  return float(top1)


def test_train_acc1_is_the_mean_top1_of_the_epochs_steps(run):
  rows, records, spe, _ = run
  c = _config()
  assert [int(r['epoch']) for r in rows] == [1, 2, 3] and len(records) == EPOCHS * spe
  for r in rows:
    e = int(r['epoch'])
    want = np.mean([_timm_top1(p, b, c) for p, b in records[(e - 1) * spe:e * spe]])
    assert float(r['train_acc1']) == pytest.approx(want, abs=1e-4), e
  assert float(rows[-1]['train_acc1']) > float(rows[0]['train_acc1']) + 5   # it learns


def test_logged_lr_is_the_lr_deits_loop_trains_each_epoch_at(run):
  rows = run[0]
  o = _config().optim
  assert (o.lr_scaling, o.schedule_unit, o.schedule_epoch_lag) == ('none', 'epoch', 1)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=o.lr)
  sched = CosineLRScheduler(opt, t_initial=EPOCHS, lr_min=o.min_lr, warmup_lr_init=o.warmup_lr,
                            warmup_t=o.warmup_epochs, t_in_epochs=True)
  want = []
  for epoch in range(EPOCHS):
    want.append(opt.param_groups[0]['lr'])     # what this epoch trains at
    sched.step(epoch)
  got = [float(r['lr']) for r in rows]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert len(set(want)) == 2                  # the peak twice (the lag), then the cosine


def test_validation_columns_are_timms_top1_top5_and_cross_entropy(run):
  rows, final, c = run[0], run[3], _config()
  val = sources.digits('val', c.dataset.image_size)
  images = np.stack([val[i]['image'] for i in range(len(val))])
  labels = torch.tensor([int(val[i]['label']) for i in range(len(val))])
  assert len(val) % c.eval_batch_size                       # a padded last batch
  logits = _timm_logits(final, images, c)
  top1, top5 = accuracy(logits, labels, topk=(1, 5))
  last = rows[-1]
  assert float(last['val_acc1']) == pytest.approx(float(top1), abs=1e-4)
  assert float(last['val_acc5']) == pytest.approx(float(top5), abs=1e-4)
  want = torch.nn.functional.cross_entropy(logits, labels).item()
  assert float(last['val_loss']) == pytest.approx(want, rel=1e-5)
