r"""The ConvNet teacher for DeiT distillation: ResNet-50 (v2, GroupNorm + weight standardisation).

DeiT distils from a ConvNet (RegNetY-16GF in the paper) because it carries the
locality prior the ViT lacks; any ConvNet trained here can be the teacher.

  python -m vit_jax.main --config configs/teacher_resnet.py --workdir runs/teacher
  python -m vit_jax.main --config configs/teacher_resnet.py:quick --workdir runs/teacher_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/teacher_resnet.py')
  return config_lib.resnet_teacher(config_lib.base(), quick_variant=arg == 'quick')
