r"""Original DeiT-S with a distillation token (seed 001), ImageNet-100, 300 epochs.

The cls and dist tokens both get position embeddings; the dist token has its
own head and the two heads' logits are averaged at evaluation. Until a
ConvNet teacher is wired in, both heads are trained on the labels.

  python -m vit_jax.main --config configs/deit_distill.py --workdir runs/deit_distill
  python -m vit_jax.main --config configs/deit_distill.py:quick --workdir runs/distill_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_distill.py')
  c = config_lib.deit_small_imagenet(config_lib.base())
  return config_lib.quick(c) if arg == 'quick' else c
