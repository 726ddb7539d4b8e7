r"""Seed 002: DeiT-III ViT-S/16 + G1 gate (Qiu et al. 2025) after SDPA, ImageNet-100, LAMB.

The recipe is configs/vanilla.py's; only the model changes.

  python -m vit_jax.main --config configs/sdpa_gated.py --workdir runs/g1
  python -m vit_jax.main --config configs/sdpa_gated.py:quick --workdir runs/g1_quick
"""
from vit_jax import config_lib
from vit_jax.models import variants


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/sdpa_gated.py', config_lib.STUDY_ARGS)
  c = config_lib.load('vanilla', arg)
  variants.apply(c.model, 'sdpa_gated')   # vit_jax/models/variants.py: the change and its source
  return c
