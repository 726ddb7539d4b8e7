r"""DeiT-Small/4 on CIFAR-100 (seed 000's baseline): 32x32, patch 4, 100 epochs.

AdamW lr 3e-4, wd 0.05, cosine per step to 0, batch 256, gradient clipping 1.0,
dropout 0.1, MLP head, label-only cross-entropy; random crop (pad 4) + flip.
(The seed also applies RandAugment(2, 9); that arrives with the augmentation work.)

  python -m vit_jax.main --config configs/deit_cifar100.py --workdir runs/deit_c100
  python -m vit_jax.main --config configs/deit_cifar100.py:quick --workdir runs/deit_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_cifar100.py')
  c = config_lib.deit_small_cifar100(config_lib.base())
  return config_lib.quick(c) if arg == 'quick' else c
