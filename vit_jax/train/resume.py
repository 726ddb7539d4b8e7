"""trainer=train's check before any work: the data is there, the workdir takes files, and a
workdir that holds a run is resumed only by a config that trains the same thing."""
import os

from vit_jax import files
from vit_jax import models
from vit_jax.data import sources
from vit_jax.train import checkpoint
from vit_jax.train import steps


def check(config, workdir: str) -> None:
  """Everything the run will need from outside its config; nothing is touched."""
  sources.check_available(config.dataset)
  files.require_writable(workdir, 'workdir', 'choose another --workdir', also=['checkpoints'])
  check_checkpoint(config, workdir)


def check_checkpoint(config, workdir: str) -> None:
  """A workdir's checkpoint must hold the model this config builds, its EMA and gradient
  accumulator, and the data order it fixes.

  The newest step whose metadata reads is checked; an unreadable one is left for the
  restore to report and skip.
  """
  folder = os.path.join(workdir, 'checkpoints')
  model = models.build_model(config.model, config.dataset.num_classes, config.dtype)
  for step in reversed(checkpoint.saved_steps(folder)):
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
