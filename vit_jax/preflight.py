"""Checks run before any work: a bad value gets one line naming it and what is accepted.

Each check has one owner, the module whose table or fields it is about; this module only
calls them, in the order the data flows (config, model, data, recipe, step), then the
trainer's own check of its workdir (trainers.TRAINERS).
"""
from vit_jax import config_lib
from vit_jax import models
from vit_jax import runlock
from vit_jax import trainers
from vit_jax.data import augment
from vit_jax.data import sources
from vit_jax.models import token_norms
from vit_jax.train import losses
from vit_jax.train import optim
from vit_jax.train import steps
from vit_jax.train import teacher

# The checks of a config built on config_lib.base(), in order: those that read the config
# alone, then those that also read a checkpoint (init.source's, the teacher's).
FIELD_CHECKS = (config_lib.check, losses.check, optim.check, token_norms.check, steps.check,
                augment.check, sources.check)
FILE_CHECKS = (models.check, teacher.check)


def check_fields(config) -> None:
  """Every check of a base() config that needs no file."""
  for check_fields_of in FIELD_CHECKS:
    check_fields_of(config)


def check(config, workdir: str) -> None:
  entry = trainers.get(config.trainer)
  if entry.writes_workdir:   # a live run's workdir: refused before anything
    runlock.check_settings(config.run_lock.lease_s, config.run_lock.renew_s)
    runlock.check(workdir, config.run_lock.lease_s)
  if entry.vit_config:
    check_fields(config)
    for check_files_of in FILE_CHECKS:
      check_files_of(config)
  if entry.check:
    trainers.function(entry.check)(config, workdir)
