"""Teacher, distillation inside the train step, mixed precision (faults: test_faults.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import config_lib
from vit_jax import models
from vit_jax.data import augment
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.models.resnet import ResNet
from vit_jax.train import checkpoint
from vit_jax.train import losses
from vit_jax.train import steps
from vit_jax.train import teacher


def test_resnet50_param_count_by_hand():
  # torchvision ResNet-50: 25,557,032 parameters, of which 53,120 are BatchNorm.
  # v2 keeps every conv and the fc, and has GroupNorms before each conv of a
  # block (on its input) plus one at the end: 45,440 (worked out per stage).
  conv_and_fc = 25_557_032 - 53_120
  count = models.count_params(models.abstract_params(ResNet(1000)))
  assert count == conv_and_fc + 45_440


def test_resnet_shapes():
  model = ResNet(10, image_size=16, stage_sizes=(1, 1), width=8, groups=4, stem='small')
  x = jnp.ones((2, 16, 16, 3))
  params = model.init({'params': jax.random.key(0)}, x)['params']
  logits, out = model.apply({'params': params}, x)
  chex.assert_shape([logits, out['patch_tokens']], [(2, 10), (2, 64, 64)])


def _teacher_workdir(tmp_path, width=16):
  """A teacher checkpoint in the real on-disk format, from an untrained quick teacher."""
  c = config_lib.load('teacher_resnet', 'quick')
  c.model.width = width
  compiled = steps.CompiledSteps(c)
  state = compiled.setup(steps_per_epoch=1)
  mngr = checkpoint.manager(str(tmp_path), 10)
  checkpoint.save(mngr, 3, state, {'seed': 0}, {'val_acc1': 50.0})
  mngr.close()
  return state.params


def _distill_config(checkpoint_path=''):
  c = config_lib.load('deit_distill', 'quick')
  c.model.update(drop_path_rate=0.0, depth=2)
  c.teacher.checkpoint = checkpoint_path
  return c


def test_teacher_loads_by_workdir_or_step_dir(tmp_path):
  saved = _teacher_workdir(tmp_path)
  c = _distill_config(str(tmp_path))
  _, params = teacher.load(c.teacher, 10)
  chex.assert_trees_all_close(params, saved)
  c.teacher.checkpoint = str(tmp_path / 'checkpoints' / '3')
  chex.assert_trees_all_close(teacher.load(c.teacher, 10)[1], saved)


def test_teacher_bad_path_or_shape_is_one_line(tmp_path):
  c = _distill_config(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
    teacher.check(c)
  _teacher_workdir(tmp_path, width=8)
  c.teacher.checkpoint = str(tmp_path)
  with pytest.raises(ValueError) as e:
    teacher.check(c)
  msg = str(e.value)
  assert '\n' not in msg and 'does not match teacher.model' in msg
  assert 'in the checkpoint' in msg and str(tmp_path) in msg


def test_frozen_teacher_inside_the_train_step(tmp_path):
  teacher_params = _teacher_workdir(tmp_path)
  c = _distill_config(str(tmp_path))
  pair = teacher.load(c.teacher, 10)
  compiled = steps.CompiledSteps(c, teacher=pair)
  state = compiled.setup(steps_per_epoch=1)
  params0 = jax.device_get(state.params)
  batch = next(pipeline.eval_batches(sources.digits('train', 16), 64))
  del batch['mask']
  state, metrics = compiled.train_step(state, compiled.global_batch(batch))

  images = augment.normalize(jnp.asarray(batch['image']), c.dataset)
  t_logits = pair[0].apply({'params': teacher_params}, images)[0]
  _, out = compiled.model.apply({'params': params0}, images, train=True,
                               rngs={'dropout': jax.random.key(0)})
  targets = jax.nn.one_hot(batch['label'], 10)
  expected = (0.5 * losses.softmax_xent(out['cls_logits'], losses.smooth_labels(targets, 0.1)) +
              0.5 * losses.hard_distillation(out['dist_logits'], t_logits))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  chex.assert_trees_all_close(compiled.teacher_params, teacher_params)   # frozen


def test_bfloat16_training_tracks_float32():
  """40 steps on the same batches in float32 (the reference) and bf16: params and optimizer
  state stay float32, the loss is float32, and the bf16 losses follow the float32 ones
  (within 3% per step) while both fall; the final logits agree within 0.1."""
  c = config_lib.load('vanilla', 'quick')
  c.model.depth = 2
  c.optim.warmup_epochs = 0.0
  source = sources.digits('train', 16)
  batches = [b for b in pipeline.eval_batches(source, 64)][:10]
  for b in batches:
    del b['mask']
  results = {}
  for dtype in ('float32', 'bfloat16'):
    c.dtype = dtype
    compiled = steps.CompiledSteps(c)
    state = compiled.setup(steps_per_epoch=40)
    step_losses = []
    for i in range(40):
      state, metrics = compiled.train_step(state, compiled.global_batch(batches[i % 10]))
      step_losses.append(metrics['loss'])
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert all(l.dtype == jnp.float32 for l in step_losses)
    logits, _ = compiled.model.apply({'params': state.params},
                                    augment.normalize(jnp.asarray(batches[0]['image']), c.dataset))
    assert logits.dtype == jnp.float32
    results[dtype] = (np.asarray(step_losses, np.float64), np.asarray(logits))
  f32, bf16 = results['float32'][0], results['bfloat16'][0]
  assert f32[-10:].mean() < 0.8 * f32[:10].mean()          # it learns
  np.testing.assert_allclose(bf16, f32, rtol=0.03)
  np.testing.assert_allclose(results['bfloat16'][1], results['float32'][1], atol=0.1)
