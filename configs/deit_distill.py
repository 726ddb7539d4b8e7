r"""Seed 001: the original DeiT-S with a distillation token, ImageNet-100, 300 epochs.

The cls and dist tokens both get position embeddings; the cls head learns the
labels, the dist head the frozen ConvNet teacher's argmax (hard distillation,
0.5/0.5); their logits are averaged at evaluation. The teacher is a workdir
made by configs/teacher_resnet.py (its best checkpoint), or one
checkpoints/<epoch> directory of it; --config.teacher.kind=none trains both
heads on the labels instead (the no-teacher baseline).

Sources, named on each line:
  DeiT      Touvron et al. 2021 and its code (facebookresearch/deit: main.py, engine.py,
            losses.py, models.py; timm's create_transform, Mixup, RandomErasing, which it
            calls), with the deit_small_patch16_224 command of its README;
  seed 001  the reference conversation, where it says otherwise;
  ours      a choice of this project, with the reason.
docs/recipes.md lists the same values (a test keeps the two equal).

  python -m vit_jax.main --config configs/teacher_resnet.py:quick --workdir runs/teacher_quick
  python -m vit_jax.main --config configs/deit_distill.py:quick --workdir runs/distill_quick \
      --config.teacher.checkpoint=runs/teacher_quick
  python -m vit_jax.main --config configs/teacher_resnet.py:in1k --workdir runs/teacher_in1k
  python -m vit_jax.main --config configs/deit_distill.py:in1k --workdir runs/distill_in1k \
      --config.teacher.checkpoint=runs/teacher_in1k
"""
from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/deit_distill.py', config_lib.STUDY_ARGS)
  c = config_lib.base()
  c.total_epochs = 300              # DeiT --epochs 300
  c.batch_size = 256                # ours: one GPU's; DeiT: 4 x 256 = 1024, lr scaled to it
  c.dtype = 'bfloat16'              # DeiT: mixed precision (AMP); ours: bf16

  d = c.dataset
  d.name = 'imagenet100'            # ours: seed 002's data set, so the two studies compare
                                    # (DeiT: ImageNet-1k; seed 001 talks of a CIFAR-10 script)
  d.image_size = 224                # DeiT --input-size 224
  d.num_classes = 100               # ImageNet-100
  d.mean = (0.485, 0.456, 0.406)    # DeiT: timm's ImageNet mean and std
  d.std = (0.229, 0.224, 0.225)     # DeiT
  d.random_crop_padding = 0         # DeiT: RandomResizedCrop(0.08-1, bicubic), no padded crop
  d.repeated_aug = 3                # DeiT --repeated-aug (RASampler, 3 repeats)
  d.eval_crop_ratio = 0.875         # DeiT: resize to 256, centre crop 224
  d.workers = 8                     # ours: loader processes (DeiT: --num_workers 10)

  a = c.augment
  a.hflip = True                    # DeiT: timm create_transform, hflip 0.5
  a.color_jitter = 0.0              # DeiT: timm skips color jitter when RandAugment is on
  a.randaugment_layers = 2          # DeiT --aa rand-m9-mstd0.5-inc1: 2 layers
  a.randaugment_policy = 'timm'     # DeiT: timm's 'inc1' ops, each with p 0.5
  a.randaugment_magnitude = 9.0     # DeiT: m9
  a.randaugment_mstd = 0.5          # DeiT: mstd0.5
  a.randaugment_resample = 'bicubic'  # DeiT --train-interpolation bicubic
  a.mixup = 0.8                     # DeiT --mixup 0.8
  a.cutmix = 1.0                    # DeiT --cutmix 1.0
  a.mix_switch_prob = 0.5           # DeiT --mixup-switch-prob 0.5
  a.cutmix_box = 'floor'            # DeiT's timm (<= 0.4): an odd cut is one pixel short
  a.mix_groups = 1                  # DeiT engine.py: each GPU mixes its own batch of 256
                                    # (numpy seeded seed + rank); ours: 256 is one GPU's
  a.erase_prob = 0.25               # DeiT --reprob 0.25, --remode pixel, --recount 1

  m = c.model
  m.image_size = 224                # DeiT
  m.patch_size = 16                 # DeiT deit_small_distilled_patch16_224
  m.width = 384                     # DeiT-S
  m.depth = 12                      # DeiT
  m.num_heads = 6                   # DeiT
  m.mlp_ratio = 4.0                 # DeiT
  m.qkv_bias = True                 # DeiT models.py: qkv_bias=True (seed 001's "no bias in QKV"
                                    # is not what DeiT's code does)
  m.layerscale_init = 0.0           # DeiT: no LayerScale
  m.drop_path_rate = 0.1            # DeiT --drop-path 0.1 (seed 001 too)
  m.dropout_rate = 0.0              # DeiT --drop 0.0
  m.pos_embed = 'all'               # DeiT: position embeddings on cls, dist and patches
  m.distillation = True             # DeiT: the distillation token and its head
  m.head = 'linear'                 # DeiT
  m.layer_norm_eps = 1e-6           # DeiT models.py: LayerNorm(eps=1e-6)
  m.init_scheme = 'deit'            # DeiT: trunc_normal_(std=.02)

  o = c.optim
  o.name = 'adamw'                  # DeiT --opt adamw (seed 001 too)
  o.lr = 5e-4                       # DeiT --lr 5e-4 ...
  o.lr_scaling = 'linear512'        # DeiT main.py: ... x global batch / 512
  o.weight_decay = 0.05             # DeiT --weight-decay 0.05 (seed 001 too)
  o.decay_scope = 'matrices'        # DeiT: timm 0.3.2's groups, no decay on 1-D params and
                                    # the names below
  o.no_decay_params = ('cls', 'pos_embedding')  # DeiT: its pinned timm 0.3.2 skips
                                    # no_weight_decay() = {cls_token, pos_embed}; dist_token
                                    # (1, 1, C) is decayed (timm >= 1.0 would exempt it)
  o.b1, o.b2 = 0.9, 0.999           # DeiT (torch AdamW defaults)
  o.eps = 1e-8                      # DeiT --opt-eps 1e-8
  o.clip_grad_norm = 0.0            # DeiT --clip-grad None: no clipping
  o.warmup_epochs = 5.0             # DeiT --warmup-epochs 5
  o.warmup_lr = 1e-6                # DeiT --warmup-lr 1e-6
  o.min_lr = 1e-5                   # DeiT --min-lr 1e-5
  o.schedule_unit = 'epoch'         # DeiT main.py: timm cosine, lr_scheduler.step(epoch)
  o.schedule_epoch_lag = 1          # DeiT main.py steps with the finished epoch: epoch e
                                    # trains at the lr of e - 1

  c.loss.name = 'softmax_xent'      # DeiT: SoftTargetCrossEntropy on the mixed targets
  c.loss.label_smoothing = 0.1      # DeiT --smoothing 0.1, applied by Mixup (seed 001 too)

  c.ema.decay = 0.99996             # DeiT main.py: --model-ema on by default, decay 0.99996
                                    # (kept and saved there, not evaluated; we evaluate it too)
  c.ema.warmup = False              # DeiT: timm's ModelEma has a constant decay

  t = c.teacher
  t.kind = 'hard'                   # DeiT --distillation-type hard, the paper's best
  t.alpha = 0.5                     # DeiT --distillation-alpha 0.5
  t.tau = 1.0                       # DeiT --distillation-tau 1.0 (soft only)
  t.model = config_lib.resnet_teacher_model()  # ours: ResNet-50 v2 (DeiT:
                                    # RegNetY-16GF; a ConvNet either way, as the paper advises)

  if arg == 'in1k':                 # DeiT-S's run on ImageNet-1k (README_deit.md)
    c.dataset.name = 'imagenet2012'  # DeiT: ImageNet-1k; tfds, as array_record
    c.dataset.num_classes = 1000    # DeiT
    c.augment.mix_groups = 4        # DeiT: 4 GPUs, each mixing its own 256 (engine.py)
    c.batch_size = 1024             # DeiT: --batch-size 256 on each of 4 GPUs; lr 5e-4 x 1024
                                    # / 512 = 1e-3 (linear512); the teacher: a ResNet-50 of
                                    # configs/teacher_resnet.py:in1k (DeiT: RegNetY-16GF, 82.9%)
  if arg == 'fmnist':               # the study on real data, at vanilla.py:fmnist's size
    c.dataset.name = 'fashion_mnist'  # ours: the real data set a package ships (Debian)
    c.dataset.image_size = 28       # Fashion-MNIST's own size
    c.dataset.num_classes = 10      # Fashion-MNIST
    c.dataset.random_crop_padding = 4  # DeiT datasets.py: at input sizes <= 32,
    c.dataset.crop_padding_mode = 'constant'  # RandomCrop(size, padding=4) replaces RRC
    c.dataset.workers = 0           # ours: the images are in memory
    c.model.image_size = 28         # Fashion-MNIST
    c.model.patch_size = 4          # ours: as vanilla.py:fmnist (7 x 7 patches)
    c.model.width = 64              # ours: as vanilla.py:fmnist
    c.model.depth = 4               # ours: as vanilla.py:fmnist
    c.model.num_heads = 2           # ours: as vanilla.py:fmnist
    c.total_epochs = 8              # ours: ~15 min on 2 CPU cores (RandAugment and the teacher
                                    # make the step ~2.7x vanilla.py:fmnist's)
    c.batch_size = 64               # ours: as vanilla.py:fmnist
    c.eval_batch_size = 500         # ours
    c.dtype = 'float32'             # ours: bf16 is no faster on these CPUs at this size
    c.optim.lr = 1e-3               # ours: DeiT's 5e-4 x 64 / 512 = 6e-5 is too low for a
    c.optim.lr_scaling = 'none'     # run of ~15 epochs
    c.optim.warmup_epochs = 1.0     # ours: DeiT warms up for 5 of 300 epochs
    c.optim.schedule_unit = 'step'  # ours: per update; per epoch with DeiT's lag, the 1st of
    c.optim.schedule_epoch_lag = 0  # 8 epochs would train at 1e-6
    c.checkpoint_every_epochs = 5   # ours
    c.probe.num_images = 64         # ours: the first 64 test images
    c.ema.decay = 0.0               # ours: 0.99996's half-life (~17,000 updates) > the run
    c.teacher.model = config_lib.resnet_teacher_model('fmnist')  # teacher_resnet.py:fmnist
  return config_lib.quick(c) if arg == 'quick' else c
