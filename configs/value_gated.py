r"""Seed 002: DeiT-III ViT-S/16 + G2 gate (Qiu et al. 2025) on the values, ImageNet-100, LAMB.

The recipe is configs/vanilla.py's; only the model changes.

  python -m vit_jax.main --config configs/value_gated.py --workdir runs/g2
  python -m vit_jax.main --config configs/value_gated.py:quick --workdir runs/g2_quick
"""
from vit_jax import config_lib
from vit_jax.models import variants


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/value_gated.py', config_lib.STUDY_ARGS)
  c = config_lib.load('vanilla', arg)
  variants.apply(c.model, 'value_gated')   # vit_jax/models/variants.py: the change and its source
  return c
