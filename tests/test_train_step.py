"""The train step's guards and randomness, against what README and steps.py promise (each
expectation derived by hand from that contract):

- a step whose loss or gradient is not finite is not applied, nor is any later one, and
  bad_step names the first such step (README, Precision and failures);
- each step draws its own augmentation / drop-path randomness (from the step number), the
  same again for the same step, and config.seed picks the initial parameters;
- with gradient accumulation the global batch splits into k equal parts on every device.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_run   # noqa: F401  (the shared compilation cache)
from vit_jax import config_lib
from vit_jax.data import sources
from vit_jax.train import losses
from vit_jax.train import steps

BATCH = 8


def _config(**changes):
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=1, width=32, num_heads=2)
  c.loss.update(name='softmax_xent', label_smoothing=0.0)
  c.batch_size = BATCH
  c.update(changes)
  return c


def _batch(first_label=None, seed=0):
  src = sources.digits('train', 16)
  idx = np.random.default_rng(seed).permutation(len(src))[:BATCH]
  labels = np.asarray([src[int(i)]['label'] for i in idx], np.int32)
  if first_label is not None:
    labels[0] = first_label
  return {'image': np.stack([src[int(i)]['image'] for i in idx]).astype(np.uint8),
          'label': labels}


def test_a_non_finite_gradient_stops_every_update_from_the_first_bad_step(monkeypatch):
  """A loss that is finite but whose gradient is NaN when the batch's first label is 9
  (0 x d sqrt|u - u| / du = NaN, only in that branch of a cond): steps 0 and 2 are good,
  1 and 3 are poisoned. Step 0 moves the params; from step 1 on nothing moves, and
  bad_step stays 1 (the first), whatever came after."""
  real = losses.batch_loss

  def poisoned(loss_cfg):
    base = real(loss_cfg)

    def loss(logits, targets):
      nan_grad = lambda l: 0.0 * jnp.sqrt(jnp.abs(l[0, 0] - l[0, 0]))
      return base(logits, targets) + jax.lax.cond(
          targets[0, 9] > 0.5, nan_grad, lambda l: 0.0 * l[0, 0], logits)
    return loss
  monkeypatch.setattr(losses, 'batch_loss', poisoned)
  trainer = steps.CompiledSteps(_config())
  state = trainer.setup(steps_per_epoch=4)
  batches = [_batch(first_label=l, seed=i) for i, l in enumerate((1, 9, 2, 9))]
  params = [jax.device_get(state.params)]
  for i, batch in enumerate(batches):
    state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    assert np.isfinite(float(metrics['loss'])), i            # the loss stays finite
    assert np.isfinite(float(metrics['grad_norm'])) == (i % 2 == 0), i
    params.append(jax.device_get(state.params))
  moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(params[0], params[1]) > 0                     # step 0 applied
  for i in (2, 3, 4):
    assert moved(params[1], params[i]) == 0, i                # nothing from step 1 on
  assert int(state.bad_step) == 1 and int(state.step) == 4


def test_each_step_draws_its_own_randomness_and_the_seed_picks_the_init():
  """Mixup / CutMix and drop-path on: the same params and batch give the same loss at the
  same step number and another one at the next (no LayerScale and a 100x head, so that
  the logits, and the loss, follow the input); seeds 0 and 1 initialise differently."""
  c = _config()
  c.augment.update(mixup=0.8, cutmix=1.0)
  c.model.update(depth=2, drop_path_rate=0.5, layerscale_init=0.0)
  trainer = steps.CompiledSteps(c)
  state = trainer.setup(steps_per_epoch=4)
  head = state.params['head']['out']
  state = state.replace(params={**state.params, 'head': {'out': {**head,
                                                                 'kernel': 100 * head['kernel']}}})
  batch = trainer.global_batch(_batch())
  copy = lambda s, step: jax.tree.map(jnp.copy, s).replace(step=jnp.asarray(step, jnp.int32))
  loss = lambda step: float(trainer.train_step(copy(state, step), batch)[1]['loss'])
  assert loss(0) == loss(0)
  assert loss(0) != loss(1) and loss(1) != loss(2)
  init = lambda seed: jax.tree.leaves(steps.CompiledSteps(_config(seed=seed)).setup(1).params)
  first, again, other = init(0), init(0), init(1)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not any(np.array_equal(a, b) for a, b in zip(first, other) if np.std(a) > 1e-6)


@pytest.mark.parametrize('batch,k,devices,ok', [(16, 4, 2, True), (12, 4, 2, False),
                                                (12, 3, 2, True), (8, 2, 4, True),
                                                (8, 4, 4, False)])
def test_micro_batches_split_evenly_over_the_devices(batch, k, devices, ok):
  c = _config(batch_size=batch, grad_accum_steps=k)
  c.eval_batch_size = 8
  if ok:
    steps.check_batch_sizes(c, devices)
    return
  with pytest.raises(ValueError, match=rf'^batch_size={batch} must be a positive multiple of '
                     rf'grad_accum_steps={k} x {devices} devices = {k * devices}$'):
    steps.check_batch_sizes(c, devices)
