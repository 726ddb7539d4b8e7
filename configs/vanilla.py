r"""DeiT-III ViT-S/16 with LayerScale (seed 002's baseline), ImageNet-100, LAMB, 400 epochs.

  python -m vit_jax.main --config configs/vanilla.py --workdir runs/vanilla
  python -m vit_jax.main --config configs/vanilla.py:quick --workdir runs/vanilla_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/vanilla.py')
  c = config_lib.deit3_small_imagenet100(config_lib.base())
  return config_lib.quick(c) if arg == 'quick' else c
