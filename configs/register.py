r"""DeiT-III ViT-S/16 + 4 register tokens (seed 002), ImageNet-100, LAMB, 400 epochs.

  python -m vit_jax.main --config configs/register.py --workdir runs/register
  python -m vit_jax.main --config configs/register.py:quick --workdir runs/quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/register.py')
  c = config_lib.deit3_small_imagenet100(config_lib.base())
  c.model.num_registers = 4        # learnable, no position embedding, dropped at the output
  return config_lib.quick(c) if arg == 'quick' else c
