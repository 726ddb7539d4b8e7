"""Building blocks for the files in configs/: one base, the recipes, and `quick`.

Every config file's get_config(arg) starts from `base()`, applies its study's
recipe and model, and, for arg == 'quick', shrinks to the embedded default
(scikit-learn's digits, a small model of the same variant, CPU minutes).
"""
import ml_collections

TRAINERS = ('train', 'analyze', 'crystallize')
ARGS = ('', 'quick')


def check_arg(arg: str | None, config_file: str) -> str:
  arg = arg or ''
  if arg not in ARGS:
    raise ValueError(f'{config_file}: unknown config argument {arg!r}; '
                     f'valid: {", ".join(repr(a) for a in ARGS)}')
  return arg


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = 'train'               # what main runs: one of TRAINERS
  c.seed = 0
  c.total_epochs = 100
  c.batch_size = 256                # global, over all devices and processes
  c.eval_batch_size = 256
  c.dtype = 'float32'               # compute dtype; params stay float32
  c.checkpoint_every_epochs = 25    # kept for good; the latest is always kept too

  # Multi-process runs (vit_jax/distributed.py). All empty: a SLURM or Open MPI
  # job is detected from its environment, anything else is one process.
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address='',     # HOST:PORT of process 0, reachable from every process
      num_processes=0,            # 0 = detect
      process_id=-1,              # -1 = detect
      init_timeout_s=300.0))      # start-up that takes longer stops with an error

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'cifar100'       # digits | cifar10 | cifar100 | imagenet100
  c.dataset.data_dir = ''           # tfds data_dir ('' = tfds default) or ImageFolder root
  c.dataset.image_size = 32
  c.dataset.num_classes = 100
  c.dataset.mean = (0.485, 0.456, 0.406)
  c.dataset.std = (0.229, 0.224, 0.225)
  c.dataset.random_crop_padding = 0  # reflect-padded random crop on the CPU if > 0
  c.dataset.repeated_aug = 1        # DeiT repeated augmentation: each image k times, 1 = off
  c.dataset.workers = 0             # grain worker processes; 0 = in the main process

  # On-device augmentation inside the jitted train step (vit_jax/data/augment.py).
  c.augment = ml_collections.ConfigDict(dict(
      hflip=False,                # random horizontal flip
      three_augment=False,        # DeiT-III: one of grayscale / solarize / blur
      color_jitter=0.0,           # ColorJitter(b, c, s) strength, 0 = off
      randaugment_layers=0,       # RandAugment ops per image, 0 = off
      randaugment_magnitude=9.0, randaugment_mstd=0.5,
      mixup=0.0, cutmix=0.0,      # Beta alphas, 0 = off
      mix_switch_prob=0.5,        # P(CutMix) when both are on
      erase_prob=0.0))            # DeiT random erasing probability

  c.model = ml_collections.ConfigDict(dict(
      image_size=32, patch_size=4, width=384, depth=12, num_heads=6, mlp_ratio=4.0,
      qkv_bias=True, layerscale_init=0.0, drop_path_rate=0.0, dropout_rate=0.0,
      attention_dropout_rate=0.0, num_registers=0, pos_embed='all', distillation=False,
      gate='none', svd_tap_layers=(), svd_rank=32, head='linear', head_dropout_rate=0.0,
      layer_norm_eps=1e-6, init_scheme='deit',
      attention_impl='xla'))        # 'cudnn': fused attention on a GPU (bf16)

  c.optim = ml_collections.ConfigDict(dict(
      name='adamw', lr=5e-4, lr_scaling='none', weight_decay=0.05, b1=0.9, b2=0.999,
      eps=1e-8, clip_grad_norm=1.0, warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5))

  c.loss = ml_collections.ConfigDict(dict(name='softmax_xent', label_smoothing=0.0))
  # DeiT-III --bce-target-thresh: BCE targets above it become 1, the rest 0 (unset = off).
  c.loss.bce_target_threshold = ml_collections.config_dict.placeholder(float)

  # DeiT distillation: the dist token's head learns from a frozen teacher
  # ('hard': its argmax; 'soft': KL at temperature tau, times tau^2), the cls
  # head from the labels: (1 - alpha) * label loss + alpha * teacher loss.
  c.teacher = ml_collections.ConfigDict(dict(kind='none', checkpoint='', alpha=0.5, tau=1.0))
  c.teacher.model = ml_collections.ConfigDict()

  # Fixed probe batch from the validation split for per-epoch token-norm stats.
  # A token is an outlier if its L2 norm is above outlier_factor x the median
  # norm of the batch ('relative', the default) or above outlier_threshold
  # ('absolute', Darcet et al.'s hand-picked 150 for ViT-L/g). The relative rule
  # is the default for ViT-S because norms scale with the model: seed 002's
  # artifact-free ViT-S had mean 8.87 and std 0.38, so 150 could never fire,
  # while 2x the median is 20+ standard deviations above such a unimodal
  # distribution and below the several-fold norms of high-norm tokens.
  c.probe = ml_collections.ConfigDict(dict(
      num_images=64, outlier_rule='relative', outlier_factor=2.0, outlier_threshold=150.0))

  # config.trainer='analyze' (vit_jax/analysis/run.py): which checkpoint
  # ('latest', 'best' or an epoch number), how many probe images to draw
  # attention maps for, and below which value a gate counts as closed.
  c.analysis = ml_collections.ConfigDict(dict(checkpoint='best', num_images=4,
                                              gate_sparse_below=0.1))
  return c


def deit3_small_imagenet100(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seed 002: DeiT-III ViT-S/16 at 224 on ImageNet-100, LAMB, 400 epochs.

  Source (DeiT-III, ViT-S on ImageNet-1k): LAMB lr 4e-3 at batch 2048 with no
  lr scaling, wd 0.05, 800 epochs, 5 warmup epochs from 1e-6, min lr 1e-5,
  drop-path 0.05, LayerScale, BCE, no label smoothing. Seed 002 changes: 400
  epochs, ImageNet-100, lr 1e-3 (its later runs), LayerScale init 1e-4.
  """
  c.total_epochs = 400
  c.batch_size = 256
  c.dataset.update(name='imagenet100', image_size=224, num_classes=100, workers=8)
  c.model.update(image_size=224, patch_size=16, layerscale_init=1e-4,
                 drop_path_rate=0.05, pos_embed='patches')
  c.optim.update(name='lamb', lr=1e-3, lr_scaling='none', weight_decay=0.05,
                 warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5, clip_grad_norm=1.0)
  c.loss.update(name='sigmoid_bce', label_smoothing=0.0)
  c.augment.update(hflip=True, three_augment=True, color_jitter=0.3, mixup=0.8, cutmix=1.0)
  c.dataset.repeated_aug = 3
  return c


def deit_small_cifar100(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seed 000: DeiT-Small/4 at 32x32 on CIFAR-100, 100 epochs, AdamW 3e-4, wd 0.05, cosine, batch 256.

  The reference model is torch's pre-norm TransformerEncoderLayer: qkv bias,
  dropout 0.1, LayerNorm eps 1e-5, position embeddings on cls too, MLP head.
  """
  c.total_epochs = 100
  c.batch_size = 256
  c.dataset.update(name='cifar100', image_size=32, num_classes=100,
                   random_crop_padding=4)
  c.augment.update(hflip=True, randaugment_layers=2, randaugment_magnitude=9.0,
                   randaugment_mstd=0.0)   # torchvision RandAugment(2, 9): fixed magnitude
  c.model.update(image_size=32, patch_size=4, layerscale_init=0.0, pos_embed='all',
                 dropout_rate=0.1, attention_dropout_rate=0.1, head='mlp',
                 head_dropout_rate=0.1, layer_norm_eps=1e-5)
  c.optim.update(name='adamw', lr=3e-4, weight_decay=0.05, warmup_epochs=0.0, min_lr=0.0)
  return c


def deit_small_imagenet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seed 001 / original DeiT-S: AdamW lr 5e-4 x batch/512, wd 0.05, 300 epochs,
  drop-path 0.1, label smoothing 0.1, distillation token, cls+dist position embeddings."""
  c.total_epochs = 300
  c.batch_size = 256
  c.dataset.update(name='imagenet100', image_size=224, num_classes=100, workers=8)
  c.model.update(image_size=224, patch_size=16, layerscale_init=0.0, pos_embed='all',
                 drop_path_rate=0.1, distillation=True)
  c.teacher.update(kind='hard', alpha=0.5, tau=1.0)
  c.teacher.model = resnet_teacher_model(quick_variant=False)
  c.optim.update(name='adamw', lr=5e-4, lr_scaling='linear512', weight_decay=0.05,
                 warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5)
  c.loss.update(name='softmax_xent', label_smoothing=0.1)
  c.augment.update(hflip=True, mixup=0.8, cutmix=1.0, erase_prob=0.25, randaugment_layers=2,
                   randaugment_magnitude=9.0, randaugment_mstd=0.5)
  c.dataset.repeated_aug = 3
  return c


def resnet_teacher_model(quick_variant: bool) -> ml_collections.ConfigDict:
  """The ConvNet teacher: ResNet-50 (v2, GroupNorm) at 224, or a 2-stage width-16 one for digits."""
  if quick_variant:
    return ml_collections.ConfigDict(dict(arch='resnet', image_size=16, stage_sizes=(1, 1),
                                          width=16, groups=8, stem='small'))
  return ml_collections.ConfigDict(dict(arch='resnet', image_size=224, stage_sizes=(3, 4, 6, 3),
                                        width=64, groups=32, stem='imagenet'))


def resnet_teacher(c: ml_collections.ConfigDict, quick_variant: bool) -> ml_collections.ConfigDict:
  """A ConvNet teacher for DeiT distillation, trained by the same CLI.

  Standard ResNet recipe: SGD (Nesterov momentum 0.9) lr 0.1 x batch/256,
  wd 1e-4 on weight matrices, label smoothing 0.1, cosine with 5 warmup epochs.
  """
  c.model = resnet_teacher_model(quick_variant)
  c.optim.update(name='sgd', lr=0.2, lr_scaling='linear512', weight_decay=1e-4, b1=0.9,
                 warmup_epochs=5.0, warmup_lr=1e-6, min_lr=0.0)
  c.loss.update(name='softmax_xent', label_smoothing=0.1)
  if quick_variant:
    _digits(c)
    c.total_epochs = 20
    c.optim.update(lr_scaling='none', lr=0.05, warmup_epochs=1.0)
  else:
    c.total_epochs = 100
    c.dataset.update(name='imagenet100', image_size=224, num_classes=100, workers=8)
  return c


def _digits(c: ml_collections.ConfigDict) -> None:
  c.batch_size = 64
  c.eval_batch_size = 128
  c.checkpoint_every_epochs = 10
  c.dataset.update(name='digits', image_size=16, num_classes=10, mean=(0.5,) * 3,
                   std=(0.5,) * 3, random_crop_padding=0, workers=0, repeated_aug=1)
  # Digits are not flip-invariant, and 40 epochs are too few for mixing and
  # heavy augmentation to pay off: the embedded default trains without them.
  c.augment.update(hflip=False, three_augment=False, color_jitter=0.0, mixup=0.0, cutmix=0.0,
                   erase_prob=0.0, randaugment_layers=0)
  c.probe.num_images = 32


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The embedded default: digits at 16x16, a 4-block width-64 model of the same variant."""
  c.total_epochs = 40
  _digits(c)
  c.model.update(image_size=16, patch_size=4, width=64, depth=4, num_heads=4, svd_rank=8,
                 svd_tap_layers=tuple(l // 3 for l in c.model.svd_tap_layers))
  c.optim.update(lr=5e-3 if c.optim.name == 'lamb' else 1e-3, lr_scaling='none',
                 warmup_epochs=2.0)
  if c.teacher.kind != 'none':
    c.teacher.model = resnet_teacher_model(quick_variant=True)
  return c
