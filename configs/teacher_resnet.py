r"""The ConvNet teacher for DeiT distillation: ResNet-50 (v2, GroupNorm + weight standardisation).

DeiT distils from a ConvNet (RegNetY-16GF in the paper) because it carries the
locality prior the ViT lacks; any ConvNet trained here can be the teacher. The
recipe is ours, a standard ResNet one; no seed trains a teacher.

  python -m vit_jax.main --config configs/teacher_resnet.py --workdir runs/teacher
  python -m vit_jax.main --config configs/teacher_resnet.py:quick --workdir runs/teacher_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/teacher_resnet.py', config_lib.STUDY_ARGS)
  quick = arg == 'quick'
  c = config_lib.base()
  c.total_epochs = 100              # ours
  c.dataset.update(name='imagenet100', image_size=224, num_classes=100,  # the students' data
                   workers=8)
  c.model = config_lib.resnet_teacher_model('quick' if quick else arg)
  o = c.optim
  o.name = 'sgd'                    # ours: SGD, Nesterov momentum 0.9
  o.b1 = 0.9
  o.lr = 0.2                        # ours: 0.1 x batch / 256, written as 0.2 x batch / 512
  o.lr_scaling = 'linear512'
  o.weight_decay = 1e-4             # ours: on weight matrices
  o.warmup_epochs = 5.0             # ours
  o.schedule_unit = 'step'          # ours: cosine per update
  c.loss.label_smoothing = 0.1      # ours
  if arg == 'in1k':                 # the students' ImageNet-1k (deit_distill.py:in1k)
    c.dataset.update(name='imagenet2012', num_classes=1000)
  if arg == 'fmnist':               # the teacher of deit_distill.py:fmnist
    c.dataset.update(name='fashion_mnist', image_size=28, num_classes=10, workers=0)
    c.dataset.random_crop_padding = 4  # ours: the students' crop (DeiT at <= 32 px)
    c.augment.hflip = True          # ours: the students' flip
    c.total_epochs = 8              # ours: ~15 min on 2 CPU cores (its step ~2.7x
                                    # vanilla.py:fmnist's)
    c.batch_size = 64               # ours: as the students
    c.eval_batch_size = 500         # ours
    o.warmup_epochs = 1.0           # ours
    c.checkpoint_every_epochs = 5   # ours
  if quick:
    config_lib.digits(c)
    c.total_epochs = 20
    o.update(lr_scaling='none', lr=0.05, warmup_epochs=1.0)
  return c
