r"""Seed 002: DeiT-III ViT-S/16 + 4 register tokens (Darcet et al. 2024), ImageNet-100, LAMB.

The recipe is configs/vanilla.py's; only the model changes.

  python -m vit_jax.main --config configs/register.py --workdir runs/register
  python -m vit_jax.main --config configs/register.py:quick --workdir runs/quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/register.py')
  c = config_lib.load('vanilla', arg)
  c.model.num_registers = 4         # seed 002 (Darcet et al.): learnable, no position
                                    # embedding, dropped at the output
  return c
