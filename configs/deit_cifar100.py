r"""Seed 000's baseline: DeiT-Small/4 on CIFAR-100 at 32x32, AdamW 3e-4, 100 epochs.

Seed 000 is the reference script itself (DeiTSmallBaseline and train_model): its
values are the source on every line unless the line says otherwise; "torch"
names a default of the torch layer or optimizer the seed builds.
configs/deit_svd_cifar100.py adds the SVD taps. docs/recipes.md lists the same
values (a test keeps the two equal).

  python -m vit_jax.main --config configs/deit_cifar100.py --workdir runs/deit_c100
  python -m vit_jax.main --config configs/deit_cifar100.py:quick --workdir runs/deit_quick
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_cifar100.py', config_lib.FMNIST_ARGS)
  c = config_lib.base()
  c.total_epochs = 100              # seed 000
  c.batch_size = 256                # seed 000 (drop_last=True)
  c.dtype = 'bfloat16'              # seed 000: bf16 autocast (the SVD taps stay float32)

  d = c.dataset
  d.name = 'cifar100'               # seed 000
  d.image_size = 32                 # seed 000
  d.num_classes = 100               # seed 000
  d.mean = (0.0, 0.0, 0.0)          # seed 000: ToTensor only, no Normalize
  d.std = (1.0, 1.0, 1.0)           # seed 000
  d.random_crop_padding = 4         # seed 000: RandomCrop(32, padding=4)
  d.crop_padding_mode = 'constant'  # torch: RandomCrop pads with zeros by default
  d.repeated_aug = 1                # seed 000: plain shuffling

  a = c.augment
  a.hflip = True                    # seed 000: RandomHorizontalFlip
  a.randaugment_layers = 2          # seed 000: RandAugment(num_ops=2, magnitude=9)
  a.randaugment_policy = 'torchvision'  # seed 000: torchvision's 14 ops, 31 bins, all applied
  a.randaugment_magnitude = 9       # seed 000: bin 9 of 31
  a.randaugment_mstd = 0.0          # torchvision: a fixed magnitude
  a.randaugment_resample = 'nearest'  # torchvision RandAugment's default interpolation

  m = c.model
  m.image_size = 32                 # seed 000
  m.patch_size = 4                  # seed 000
  m.width = 384                     # seed 000
  m.depth = 12                      # seed 000
  m.num_heads = 6                   # seed 000
  m.mlp_ratio = 4.0                 # seed 000
  m.qkv_bias = True                 # torch: nn.MultiheadAttention(bias=True)
  m.layerscale_init = 0.0           # seed 000: no LayerScale
  m.dropout_rate = 0.1              # seed 000: pos_drop, TransformerEncoderLayer dropout 0.1
  m.attention_dropout_rate = 0.1    # seed 000: the layer's dropout reaches the attention too
  m.pos_embed = 'all'               # seed 000: (n_patches + 1) position embeddings
  m.head = 'mlp'                    # seed 000: Linear, GELU, LayerNorm, Dropout, Linear
  m.head_dropout_rate = 0.1         # seed 000
  m.layer_norm_eps = 1e-5           # torch: LayerNorm and TransformerEncoderLayer default
  m.init_scheme = 'seed000'         # seed 000's _init_weights (kaiming fan-out conv, randn * 0.02)

  o = c.optim
  o.name = 'adamw'                  # seed 000: torch.optim.AdamW
  o.lr = 3e-4                       # seed 000
  o.lr_scaling = 'none'             # seed 000
  o.weight_decay = 0.05             # seed 000
  o.decay_scope = 'all'             # seed 000: AdamW(model.parameters()) decays every parameter
  o.b1, o.b2 = 0.9, 0.999           # torch AdamW defaults
  o.eps = 1e-8                      # torch AdamW default
  o.clip_grad_norm = 1.0            # seed 000: clip_grad_norm_(..., 1.0)
  o.warmup_epochs = 0.0             # seed 000: no warmup
  o.min_lr = 0.0                    # seed 000: CosineAnnealingLR(T_max=epochs), eta_min 0
  o.schedule_unit = 'epoch'         # seed 000: scheduler.step() once per epoch
  o.schedule_epoch_lag = 0          # seed 000: stepped after the epoch, epoch e at lr(e)

  c.loss.name = 'softmax_xent'      # seed 000: F.cross_entropy on the labels
  c.loss.label_smoothing = 0.0      # seed 000
  c.ema.decay = 0.0                 # seed 000: no EMA of the weights
  if arg == 'fmnist':               # the study on real data, at vanilla.py:fmnist's size
    c.dataset.name = 'fashion_mnist'  # ours: the real data set a package ships (Debian)
    c.dataset.image_size = 28       # Fashion-MNIST's own size
    c.dataset.num_classes = 10      # Fashion-MNIST
    c.dataset.workers = 0           # ours: the images are in memory
    c.model.image_size = 28         # Fashion-MNIST (the crop keeps seed 000's padding 4)
    c.model.width = 64              # ours: as vanilla.py:fmnist (patch 4, as seed 000)
    c.model.depth = 4               # ours: as vanilla.py:fmnist
    c.model.num_heads = 2           # ours: as vanilla.py:fmnist
    c.total_epochs = 12             # ours: ~15 min on 2 CPU cores with the SVD taps (their
                                    # step ~1.8x vanilla.py:fmnist's, the baseline's ~1.4x)
    c.batch_size = 64               # ours: as vanilla.py:fmnist
    c.eval_batch_size = 500         # ours
    c.dtype = 'float32'             # ours: bf16 is no faster on these CPUs at this size
    c.checkpoint_every_epochs = 5   # ours
    c.probe.num_images = 64         # ours: the first 64 test images
  return config_lib.quick(c) if arg == 'quick' else c
