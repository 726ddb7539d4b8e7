"""The frozen ConvNet teacher of DeiT distillation, loaded from a training workdir."""
import os

import jax

from vit_jax import models
from vit_jax.train import checkpoint


def resolve_step_dir(path: str) -> str:
  """A teacher workdir (its best, else latest, checkpoint) or one checkpoints/<step> dir."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'teacher.checkpoint={path!r} does not exist; train a teacher with '
                            f'configs/teacher_resnet.py and pass its workdir')
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  ckpt_dir = os.path.join(path, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'teacher.checkpoint={path!r} is neither a workdir with checkpoints/ '
                            f'nor a checkpoints/<epoch> directory')
  step = checkpoint.best_step(ckpt_dir)
  if step is None:
    raise FileNotFoundError(f'teacher.checkpoint={path!r} has no finished checkpoint')
  return os.path.join(ckpt_dir, str(step))


def build(teacher_cfg, num_classes: int):
  model = models.build_model(teacher_cfg.model, num_classes, 'float32')
  return model, models.abstract_params(model)


def check(config) -> None:
  """With distillation (teacher.kind), the student has a dist token and the teacher's
  checkpoint is there and fits teacher.model."""
  if config.teacher.kind == 'none':
    return
  student = models.build_model(config.model, config.dataset.num_classes, config.dtype)
  if not getattr(student, 'distillation', False):
    raise ValueError(f'teacher.kind={config.teacher.kind!r} needs model.distillation=True')
  checked_step_dir(config.teacher, config.dataset.num_classes)


def checked_step_dir(teacher_cfg, num_classes: int) -> str:
  """The teacher's checkpoint; one line if it is missing or does not fit teacher.model."""
  step_dir = resolve_step_dir(teacher_cfg.checkpoint)
  model, _ = build(teacher_cfg, num_classes)
  checkpoint.require_model(step_dir, model,
                           f'teacher.checkpoint={step_dir!r} does not match teacher.model')
  return step_dir


def load(teacher_cfg, num_classes: int):
  """(model, params) of the teacher; params are checked against teacher.model first."""
  step_dir = checked_step_dir(teacher_cfg, num_classes)
  model, abstract = build(teacher_cfg, num_classes)
  params = checkpoint.restore_params(step_dir)
  params = jax.tree.map(lambda a, p: p.astype(a.dtype), abstract, params)
  return model, params
