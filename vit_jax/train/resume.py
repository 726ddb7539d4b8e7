"""trainer=train's check before any work: the data is there, the workdir takes files, and a
workdir that holds a run is resumed only by a config that trains the same thing."""
import json
import os

from vit_jax import config_lib
from vit_jax import files
from vit_jax import models
from vit_jax.data import sources
from vit_jax.train import checkpoint
from vit_jax.train import steps


def check(config, workdir: str) -> None:
  """Everything the run will need from outside its config; nothing is touched."""
  sources.check_available(config.dataset)
  files.require_writable(workdir, 'workdir', 'choose another --workdir', also=['checkpoints'])
  check_set_aside(config, workdir)
  if check_checkpoint(config, workdir):
    check_fields(config, workdir)


def check_set_aside(config, workdir: str) -> None:
  """A workdir whose every checkpoint was set aside as unreadable (STEP.unreadable) is not
  trained again from epoch 1 unless start_over says so."""
  folder = os.path.join(workdir, 'checkpoints')
  aside = sorted(d for d in os.listdir(folder) if '.unreadable' in d) if os.path.isdir(
      folder) else []
  if aside and not checkpoint.saved_steps(folder) and not config.start_over:
    raise ValueError(f'workdir {workdir!r} has no readable checkpoint: its checkpoints were set '
                     f'aside as unreadable ({", ".join(aside)} in {folder}); to train it again '
                     'from epoch 1 add --config.start_over=True (they stay where they are), or '
                     'use a new --workdir')


def check_fields(config, workdir: str) -> None:
  """The run in the workdir (its config.json) was trained with this config's values of every
  field but the resumable ones (config_lib.RESUMABLE): one line naming each that differs."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = config_lib.trained(json.load(f))
  here = config_lib.trained(json.loads(config.to_json_best_effort()))
  changed = [k for k in sorted(set(saved) & set(here)) if saved[k] != here[k]]
  if not changed:
    return
  if changed == ['schedule_epochs'] and not config.schedule_epochs:
    raise ValueError(
        f'workdir {workdir!r} was trained for total_epochs={saved["schedule_epochs"]}, and its '
        f'learning-rate schedule spans them; total_epochs={config.total_epochs} would switch '
        f'to another schedule mid-run. To train on, on the run\'s schedule (the epochs past it '
        f'at optim.min_lr={config.optim.min_lr}), add --config.schedule_epochs='
        f'{saved["schedule_epochs"]}; or use a new --workdir')
  names = '; '.join(f'{k} is {here[k]!r} here but {saved[k]!r} in {path}' for k in changed[:4])
  more = f' (and {len(changed) - 4} more)' if len(changed) > 4 else ''
  raise ValueError(f'workdir {workdir!r} was trained with other settings: {names}{more}; these '
                   'change what is trained (model, optimizer, schedule, loss, augmentation, '
                   "data): resume with the run's values, or use a new --workdir")


def check_checkpoint(config, workdir: str) -> bool:
  """A workdir's checkpoint must hold the model this config builds, its EMA and gradient
  accumulator, and the data order it fixes; whether there is one (a resume).

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
    return True
  return False
