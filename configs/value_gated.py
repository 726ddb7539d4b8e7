r"""DeiT-III ViT-S/16 + G2 gate (seed 002): sigmoid(X W) on the values, per head and channel.

  python -m vit_jax.main --config configs/value_gated.py --workdir runs/g2
  python -m vit_jax.main --config configs/value_gated.py:quick --workdir runs/g2_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/value_gated.py')
  c = config_lib.deit3_small_imagenet100(config_lib.base())
  c.model.gate = 'g2'              # gates V before attention: value-dependent, not query-dependent
  return config_lib.quick(c) if arg == 'quick' else c
