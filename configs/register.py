r"""Seed 002: DeiT-III ViT-S/16 + 4 register tokens (Darcet et al. 2024), ImageNet-100, LAMB.

The recipe is configs/vanilla.py's; only the model changes.

  python -m vit_jax.main --config configs/register.py --workdir runs/register
  python -m vit_jax.main --config configs/register.py:quick --workdir runs/quick
"""
from vit_jax import config_lib
from vit_jax.models import variants


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/register.py', config_lib.STUDY_ARGS)
  c = config_lib.load('vanilla', arg)
  variants.apply(c.model, 'register')   # vit_jax/models/variants.py: the change and its source
  return c
