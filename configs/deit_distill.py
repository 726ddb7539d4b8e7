r"""Original DeiT-S with a distillation token (seed 001), ImageNet-100, 300 epochs.

The cls and dist tokens both get position embeddings; the cls head learns the
labels, the dist head the frozen ConvNet teacher's argmax (hard distillation,
0.5/0.5); their logits are averaged at evaluation. The teacher is a workdir
made by configs/teacher_resnet.py (its best checkpoint), or one
checkpoints/<epoch> directory of it; --config.teacher.kind=none trains both
heads on the labels instead (the no-teacher baseline).

  python -m vit_jax.main --config configs/teacher_resnet.py:quick --workdir runs/teacher_quick
  python -m vit_jax.main --config configs/deit_distill.py:quick --workdir runs/distill_quick \
      --config.teacher.checkpoint=runs/teacher_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_distill.py')
  c = config_lib.deit_small_imagenet(config_lib.base())
  return config_lib.quick(c) if arg == 'quick' else c
