r"""Seed 000: DeiT-Small/4 + detached SVD taps on CIFAR-100.

The recipe is configs/deit_cifar100.py's. Taps after blocks 3, 6, 9, 12: patch
tokens -> bias-free projection to rank 32 -> singular values and vectors (float32,
no gradient) -> 66 features per tap, concatenated to the cls token before the MLP
head (384 + 264 = 648 inputs).

  python -m vit_jax.main --config configs/deit_svd_cifar100.py --workdir runs/deit_svd_c100
  python -m vit_jax.main --config configs/deit_svd_cifar100.py:quick --workdir runs/svd_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_svd_cifar100.py', config_lib.FMNIST_ARGS)
  c = config_lib.load('deit_cifar100', 'fmnist' if arg == 'fmnist' else '')
  c.model.svd_tap_layers = (3, 6, 9, 12)   # seed 000: taps after these blocks (1-indexed)
  if arg == 'fmnist':                      # ours: after every quarter of the blocks, as seed
    c.model.svd_tap_layers = tuple(c.model.depth * i // 4 for i in (1, 2, 3, 4))  # 000
  c.model.svd_rank = 32                    # seed 000: svd_rank=32
  return config_lib.quick(c) if arg == 'quick' else c
