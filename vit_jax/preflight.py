"""Checks run before any work: a bad value gets one line naming it and what is accepted."""
import os

import jax

from vit_jax import files
from vit_jax import models
from vit_jax import runlock
from vit_jax import trainers
from vit_jax.data import augment
from vit_jax.data import pil_ops
from vit_jax.data import pipeline
from vit_jax.data import randaugment
from vit_jax.data import sources
from vit_jax.models import pretrained
from vit_jax.models import token_norms
from vit_jax.train import checkpoint
from vit_jax.train import losses
from vit_jax.train import optim
from vit_jax.train import steps
from vit_jax.train import teacher


def check(config, workdir: str) -> None:
  spec = trainers.get(config.trainer)
  if spec.writes_workdir:   # a live run's workdir: refused before anything
    runlock.check_settings(config.run_lock.lease_s, config.run_lock.renew_s)
    runlock.check(workdir, config.run_lock.lease_s)
  if spec.vit_config:
    check_vit(config, workdir, spec)
  if spec.check:
    trainers.function(spec.check)(config, workdir)


def check_vit(config, workdir: str, spec) -> None:
  """The fields of a config built on config_lib.base()."""
  if config.loss.name not in losses.LOSSES:
    raise ValueError(f'loss.name={config.loss.name!r} is not one of {tuple(losses.LOSSES)}')
  if config.optim.name not in optim.OPTIMIZERS:
    raise ValueError(f'optim.name={config.optim.name!r} is not one of {tuple(optim.OPTIMIZERS)}')
  optim.scaled_lr(config.optim, config.batch_size)
  optim.mask_fn(config.optim)
  if config.probe.outlier_rule not in token_norms.OUTLIER_RULES:
    raise ValueError(f'probe.outlier_rule={config.probe.outlier_rule!r} is not one of '
                     f'{token_norms.OUTLIER_RULES}')
  if config.model.image_size != config.dataset.image_size:
    raise ValueError(f'model.image_size={config.model.image_size} differs from '
                     f'dataset.image_size={config.dataset.image_size}')
  # A pretrained checkpoint: found, readable, its architecture written into config.model
  # (hub's one-line errors), then filling every parameter of the model built from it.
  imported = pretrained.load(config)
  model = models.build_model(config.model, config.dataset.num_classes, config.dtype)
  if imported is not None:
    pretrained.check_fits(config, imported, models.abstract_params(model))
  if config.teacher.kind not in losses.DISTILLATION_KINDS:
    raise ValueError(f'teacher.kind={config.teacher.kind!r} is not one of '
                     f'{losses.DISTILLATION_KINDS}')
  if config.teacher.kind != 'none':
    if not getattr(model, 'distillation', False):
      raise ValueError(f'teacher.kind={config.teacher.kind!r} needs model.distillation=True')
    teacher.check(config.teacher, config.dataset.num_classes)
  steps.check_batch_sizes(config, jax.device_count())
  check_ranges(config)
  check_choices(config)
  check_randaugment(config.augment)
  augment.check_mix_groups(config)
  if not (config.trainer == 'analyze' and config.analysis.get('images')):
    sources.check_available(config.dataset)   # not read when analyze reads a folder of images
  if spec.writes_workdir:
    files.require_writable(workdir, 'workdir', 'choose another --workdir', also=['checkpoints'])
    check_resume(config, workdir, model)


# (field, low, high): numeric fields that are only meaningful inside [low, high].
RANGES = (
    ('augment.erase_prob', 0.0, 1.0), ('augment.mix_switch_prob', 0.0, 1.0),
    ('augment.mixup', 0.0, float('inf')), ('augment.cutmix', 0.0, float('inf')),
    ('augment.color_jitter', 0.0, 0.99), ('augment.randaugment_layers', 0, 16),
    ('augment.randaugment_magnitude', 0.0, 30.0), ('augment.randaugment_mstd', 0.0, 10.0),
    ('dataset.repeated_aug', 1, 64), ('dataset.workers', 0, 1024),
    ('dataset.eval_crop_ratio', 1e-3, 1.0), ('optim.schedule_epoch_lag', 0, 10**6),
    ('optim.clip_grad_norm', 0.0, float('inf')), ('optim.warmup_epochs', 0.0, 10**6),
    ('dataset.random_crop_padding', 0, 1024), ('loss.label_smoothing', 0.0, 1.0),
    ('teacher.alpha', 0.0, 1.0), ('teacher.tau', 1e-6, float('inf')),
    ('total_epochs', 1, 10**6), ('checkpoint_every_epochs', 1, 10**6),
    ('probe.num_images', 1, 10**6), ('analysis.num_images', 1, 64),
    ('analysis.gate_sparse_below', 0.0, 1.0), ('log_every_steps', 0, 10**9),
    ('ema.decay', 0.0, 1.0 - 1e-12), ('ema.warmup_gamma', 1e-12, float('inf')),
    ('ema.warmup_power', 1e-12, float('inf')),
)


# (field, accepted values) of the fields that name a choice.
CHOICES = (
    ('augment.randaugment_policy', randaugment.POLICIES),
    ('augment.randaugment_resample', pil_ops.RESAMPLES),
    ('augment.cutmix_box', augment.CUTMIX_BOXES),
    ('dataset.crop_padding_mode', pipeline.PADDING_MODES),
    ('optim.decay_scope', optim.DECAY_SCOPES),
    ('optim.schedule_unit', optim.SCHEDULE_UNITS),
    ('analysis.weights', tuple(checkpoint.WEIGHTS)), ('evaluate.weights', tuple(checkpoint.WEIGHTS)),
)


def _get(config, field):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def check_ranges(config) -> None:
  for field, low, high in RANGES:
    value = _get(config, field)
    if not low <= value <= high:
      raise ValueError(f'{field}={value} is outside [{low}, {high}]')


def check_choices(config) -> None:
  for field, allowed in CHOICES:
    if _get(config, field) not in allowed:
      raise ValueError(f'{field}={_get(config, field)!r} is not one of {allowed}')


def check_randaugment(a) -> None:
  """timm levels are in [0, 10]; torchvision magnitudes are bins 0..30 and fixed."""
  if not a.randaugment_layers:
    return
  m = a.randaugment_magnitude
  if a.randaugment_policy == 'timm' and not 0 <= m <= randaugment.TIMM_MAX_LEVEL:
    raise ValueError(f"augment.randaugment_magnitude={m} is outside [0, 10] for the 'timm' "
                     'policy')
  if a.randaugment_policy == 'torchvision':
    if not (float(m).is_integer() and 0 <= m < randaugment.TORCHVISION_BINS):
      raise ValueError(f"augment.randaugment_magnitude={m} must be a whole bin in 0..30 for "
                       "the 'torchvision' policy")
    if a.randaugment_mstd:
      raise ValueError(f'augment.randaugment_mstd={a.randaugment_mstd} must be 0 for the '
                       "'torchvision' policy (its magnitude is fixed)")


def check_resume(config, workdir: str, model) -> None:
  """A workdir's checkpoint must hold the model this config builds; nothing is touched.

  The newest step whose metadata reads is checked (the preemption checkpoint
  first); an unreadable one is left for the restore to report and skip.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  candidates = []
  for folder in (os.path.join(ckpt_dir, checkpoint.PREEMPTED), ckpt_dir):
    candidates += [(folder, s) for s in reversed(checkpoint.saved_steps(folder))]
  for folder, step in candidates:
    try:
      checkpoint.saved_param_shapes(os.path.join(folder, str(step)))
    except Exception:  # unreadable: the restore warns and falls back past it
      continue
    checkpoint.require_model(
        os.path.join(folder, str(step)), model,
        f'workdir {workdir!r} holds a checkpoint of a different model '
        f'({os.path.relpath(folder, workdir)} step {step})', 'use a new --workdir')
    step_dir = os.path.join(folder, str(step))
    for name, field, value, saved_has, wanted in (
        ('EMA weights', 'ema.decay', config.ema.decay, checkpoint.has_ema,
         steps.ema_enabled(config)),
        ('a gradient accumulator', 'grad_accum_steps', config.grad_accum_steps,
         checkpoint.has_accumulator, config.grad_accum_steps > 1)):
      has = saved_has(step_dir)
      if has != wanted:
        raise ValueError(f'workdir {workdir!r} cannot resume with {field}={value}: its checkpoint '
                         f'({os.path.relpath(folder, workdir)} step {step}) holds '
                         f"{'' if has else 'no '}{name}; use the setting it was trained with or "
                         'a new --workdir')
    saved = checkpoint.saved_data_state(os.path.join(folder, str(step)))
    current = dict(global_batch=config.batch_size, seed=config.seed,
                   repeats=config.dataset.repeated_aug, num_records=(saved or {}).get(
                       'num_records'))     # counted when the run restores
    mismatch = checkpoint.data_mismatch(saved, current)
    if mismatch:
      raise ValueError(f'workdir {workdir!r} cannot resume exactly: {mismatch}; use the same '
                       'setting or a new --workdir')
    return
