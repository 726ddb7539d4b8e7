"""Building blocks for the files in configs/: one base, the recipes, and `quick`.

Every config file's get_config(arg) starts from `base()`, applies its study's
recipe and model, and, for arg == 'quick', shrinks to the embedded default
(scikit-learn's digits, a small model of the same variant, CPU minutes).
"""
import ml_collections

TRAINERS = ('train',)
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
  c.log_every_steps = 50

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'cifar100'       # digits | cifar10 | cifar100
  c.dataset.data_dir = ''           # tfds data_dir ('' = tfds default)
  c.dataset.image_size = 32
  c.dataset.num_classes = 100
  c.dataset.mean = (0.485, 0.456, 0.406)
  c.dataset.std = (0.229, 0.224, 0.225)
  c.dataset.random_crop_padding = 0  # reflect-padded random crop + flip if > 0
  c.dataset.hflip = False
  c.dataset.workers = 0             # grain worker processes; 0 = in the main process

  c.model = ml_collections.ConfigDict(dict(
      image_size=32, patch_size=4, width=384, depth=12, num_heads=6, mlp_ratio=4.0,
      qkv_bias=True, layerscale_init=0.0, drop_path_rate=0.0, dropout_rate=0.0,
      attention_dropout_rate=0.0, num_registers=0, pos_embed='all', distillation=False,
      gate='none', svd_tap_layers=(), svd_rank=32, head='linear', head_dropout_rate=0.0,
      layer_norm_eps=1e-6))

  c.optim = ml_collections.ConfigDict(dict(
      name='adamw', lr=5e-4, lr_scaling='none', weight_decay=0.05, b1=0.9, b2=0.999,
      eps=1e-8, clip_grad_norm=1.0, warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5))

  c.loss = ml_collections.ConfigDict(dict(name='softmax_xent', label_smoothing=0.0))

  # Fixed probe batch from the validation split for per-epoch token-norm stats.
  c.probe = ml_collections.ConfigDict(dict(
      num_images=64, outlier_rule='relative', outlier_factor=2.0, outlier_threshold=150.0))
  return c


def deit3_small_imagenet100(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seed 002: DeiT-III ViT-S/16 at 224 on ImageNet-100, LAMB, 400 epochs.

  Source (DeiT-III, ViT-S): LAMB lr 4e-3 at batch 2048, wd 0.05, 800 epochs,
  5 warmup epochs, drop-path 0.05, LayerScale; the seed runs 400 epochs.
  """
  c.total_epochs = 400
  c.batch_size = 256
  c.dataset.name = 'imagenet100'
  c.dataset.image_size = 224
  c.dataset.num_classes = 100
  c.model.update(image_size=224, patch_size=16, layerscale_init=1e-4,
                 drop_path_rate=0.05, pos_embed='patches')
  c.optim.update(name='lamb', lr=4e-3 * c.batch_size / 2048, weight_decay=0.05,
                 warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-6)
  c.loss.update(name='sigmoid_bce', label_smoothing=0.0)
  return c


def deit_small_cifar100(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seed 000: DeiT-Small/4 at 32x32 on CIFAR-100, 100 epochs, AdamW 3e-4, wd 0.05, cosine, batch 256.

  The reference model is torch's pre-norm TransformerEncoderLayer: qkv bias,
  dropout 0.1, LayerNorm eps 1e-5, position embeddings on cls too, MLP head.
  """
  c.total_epochs = 100
  c.batch_size = 256
  c.dataset.update(name='cifar100', image_size=32, num_classes=100,
                   random_crop_padding=4, hflip=True)
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
  c.dataset.update(name='imagenet100', image_size=224, num_classes=100)
  c.model.update(image_size=224, patch_size=16, layerscale_init=0.0, pos_embed='all',
                 drop_path_rate=0.1, distillation=True)
  c.optim.update(name='adamw', lr=5e-4, lr_scaling='linear512', weight_decay=0.05,
                 warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5)
  c.loss.update(name='softmax_xent', label_smoothing=0.1)
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The embedded default: digits at 16x16, a 4-block width-64 model of the same variant."""
  c.total_epochs = 40
  c.batch_size = 64
  c.eval_batch_size = 128
  c.checkpoint_every_epochs = 10
  c.log_every_steps = 1000
  c.dataset.update(name='digits', image_size=16, num_classes=10, mean=(0.5,) * 3,
                   std=(0.5,) * 3, random_crop_padding=0, hflip=False, workers=0)
  num_registers = c.model.num_registers
  c.model.update(image_size=16, patch_size=4, width=64, depth=4, num_heads=4,
                 num_registers=num_registers, svd_rank=8,
                 svd_tap_layers=tuple(l // 3 for l in c.model.svd_tap_layers))
  c.optim.update(lr=5e-3 if c.optim.name == 'lamb' else 1e-3, lr_scaling='none',
                 warmup_epochs=2.0)
  c.probe.num_images = 32
  return c
