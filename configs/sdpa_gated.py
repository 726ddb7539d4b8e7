r"""DeiT-III ViT-S/16 + G1 gate (seed 002): sigmoid(X W) on the SDPA output, per head and channel.

  python -m vit_jax.main --config configs/sdpa_gated.py --workdir runs/g1
  python -m vit_jax.main --config configs/sdpa_gated.py:quick --workdir runs/g1_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/sdpa_gated.py')
  c = config_lib.deit3_small_imagenet100(config_lib.base())
  c.model.gate = 'g1'              # X = pre-normed block input, no bias, before the output projection
  return config_lib.quick(c) if arg == 'quick' else c
