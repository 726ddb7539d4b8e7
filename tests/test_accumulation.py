"""Gradient accumulation (config.grad_accum_steps, optax.MultiSteps): k micro-batches of
batch_size / k give the update of one batch of batch_size, for AdamW and for LAMB (whose
trust ratio and gradient clipping must see the accumulated gradient), with the learning
rate counted in optimizer updates; float32, params within 1e-5 relative (max |diff| over
max |param| of each tensor) after 3 updates. Augmentation and every dropout are off,
because mixup / cutmix / drop-path draws per micro-batch differ from a full batch's;
the model has no BatchNorm, so the equivalence is exact up to float rounding. (Summing
the micro-batch gradients instead of averaging them fails the AdamW case, through Adam's
eps, tried; LAMB and clipping by global norm are blind to a uniform scale of the gradient.)"""
import jax
import numpy as np
import pytest

import tiny_run  # noqa: F401  (the shared on-disk compilation cache)
from vit_jax import config_lib
from vit_jax.data import sources
from vit_jax.train import steps

BATCH, K, UPDATES = 16, 4, 3


def _config(name, k):
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=1, width=32, num_heads=2, drop_path_rate=0.0)
  c.optim.update(name=name, schedule_unit='step', warmup_epochs=1.0, warmup_lr=1e-4,
                 lr=5e-3 if name == 'lamb' else 1e-3, clip_grad_norm=0.5 if name == 'lamb' else 0.0)
  c.batch_size, c.grad_accum_steps, c.total_epochs = BATCH, k, 2
  return c


def _batches():
  src = sources.digits('train', 16)
  rng = np.random.default_rng(0)
  idx = rng.permutation(len(src))[:BATCH * UPDATES].reshape(UPDATES, BATCH)
  return [{'image': np.stack([src[int(i)]['image'] for i in row]).astype(np.uint8),
           'label': np.asarray([src[int(i)]['label'] for i in row], np.int32)} for row in idx]


def _train(name, k):
  compiled = steps.CompiledSteps(_config(name, k))
  # 2 updates of warmup: every update has its own lr, so a schedule counted in
  # micro-steps would show.
  state = compiled.setup(steps_per_epoch=2)
  start = jax.device_get(state.params)
  for batch in _batches():
    for j in range(k):
      part = {n: v[j * BATCH // k:(j + 1) * BATCH // k] for n, v in batch.items()}
      state, _ = compiled.train_step(state, compiled.global_batch(part))
  return start, jax.device_get(state)


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_k_micro_batches_make_the_update_of_one_batch(name):
  (p0, full), (_, accum) = _train(name, 1), _train(name, K)
  assert int(accum.opt_state.gradient_step) == UPDATES and int(accum.step) == UPDATES * K
  moved = 0
  for (path, a), b, p0 in zip(jax.tree_util.tree_leaves_with_path(accum.params),
                              jax.tree.leaves(full.params), jax.tree.leaves(p0)):
    scale = np.abs(b).max()
    assert np.abs(a - b).max() <= 1e-5 * scale, (jax.tree_util.keystr(path),
                                                 np.abs(a - b).max() / scale)
    moved += np.abs(b - p0).max() > 1e-3 * max(scale, 1e-3)
  assert moved > 10          # the updates moved the weights: the comparison is not vacuous


def test_batch_size_must_split_into_k_times_the_devices():
  c = _config('adamw', 3)
  with pytest.raises(ValueError, match=r'^batch_size=16 must be a positive multiple of '
                     r'grad_accum_steps=3 x 1 devices = 3$'):
    steps.check_batch_sizes(c, 1)
  c.grad_accum_steps = 0
  with pytest.raises(ValueError, match='grad_accum_steps=0 must be a whole number >= 1'):
    steps.check_batch_sizes(c, 1)


def test_ema_follows_timm_model_ema_v3_once_per_optimizer_update():
  """With k micro-batches per update, the EMA moves once per optimizer update, as timm's
  train.py calls ModelEmaV3.update(model, step=num_updates) (num_updates counts updates,
  not micro-batches) with use_warmup: after every micro-step our EMA equals timm's EMA
  of the weights of the updates so far, float32 within 1e-6. decay 0.9 with the warmup
  makes every update's decay differ (0, 0.37, 0.52, ...), so an EMA stepped per
  micro-batch, or counted in micro-batches, shows."""
  import torch
  from timm.utils.model_ema import ModelEmaV3
  c = _config('adamw', K)
  c.ema.update(decay=0.9, warmup=True, warmup_gamma=1.0, warmup_power=2 / 3)
  compiled = steps.CompiledSteps(c)
  state = compiled.setup(steps_per_epoch=2)
  as_torch = lambda tree: [torch.from_numpy(np.array(a)) for a in jax.tree.leaves(tree)]
  net = torch.nn.ParameterList([torch.nn.Parameter(t) for t in as_torch(state.params)])
  ema_ref = ModelEmaV3(net, decay=0.9, use_warmup=True, warmup_gamma=1.0, warmup_power=2 / 3)
  updates = 0
  for batch in _batches():
    for j in range(K):
      part = {n: v[j * BATCH // K:(j + 1) * BATCH // K] for n, v in batch.items()}
      state, _ = compiled.train_step(state, compiled.global_batch(part))
      now = jax.device_get(state)
      if j == K - 1:   # an optimizer update: timm's EMA takes the new weights
        updates += 1
        with torch.no_grad():
          for p, t in zip(net, as_torch(now.params)):
            p.copy_(t)
        ema_ref.update(net, step=updates)
      for got, want in zip(jax.tree.leaves(now.ema_params), ema_ref.module):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)
  assert updates == UPDATES and int(now.opt_state.gradient_step) == UPDATES


def test_logged_grad_norm_is_the_norm_of_the_updates_gradient():
  """With k micro-batches the step's grad_norm is the norm of the mean of the micro-batch
  gradients so far: at an update's last micro-step, the norm of the gradient of the whole
  batch, i.e. what the k = 1 step logs (the params agree to 1e-5, so 1e-4 here)."""
  norms = {}
  for k in (1, K):
    trainer = steps.CompiledSteps(_config('adamw', k))
    state, norms[k] = trainer.setup(steps_per_epoch=2), []
    for batch in _batches():
      for j in range(k):
        part = {n: v[j * BATCH // k:(j + 1) * BATCH // k] for n, v in batch.items()}
        state, metrics = trainer.train_step(state, trainer.global_batch(part))
        norms[k].append(float(metrics['grad_norm']))
  np.testing.assert_allclose(norms[K][K - 1::K], norms[1], rtol=1e-4)
  assert len(set(np.round(norms[K], 6))) == len(norms[K])    # every micro-step its own
