"""What the files in configs/ build on: the full set of fields, the quick variant, loading.

Each study's recipe lives in its config file, one commented value per line naming
its source; `base()` only declares every field (its defaults are neutral: no
augmentation, no regularisation) and the infrastructure (checkpoints, probes,
processes). `quick` shrinks any recipe to the embedded default: scikit-learn's
digits, a small model of the same variant, minutes on a CPU; `in1k` (the study
configs) gives the recipe's published ImageNet-1k run.
"""
import importlib.util
import os

import ml_collections

ARGS = ('', 'quick')
# The study configs also take 'in1k', their recipe at its published size on ImageNet-1k,
# and 'fmnist', their recipe on Fashion-MNIST at a size a 2-core CPU trains in ~15 minutes.
STUDY_ARGS = ARGS + ('in1k', 'fmnist')
FMNIST_ARGS = ARGS + ('fmnist',)    # seed 000's configs: CIFAR-100 has no in1k
# Where compiled programs are kept between runs (JAX's persistent compilation cache).
COMPILATION_CACHE_DIR = '~/.cache/vit_jax/xla'
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def check_arg(arg: str | None, config_file: str, valid=ARGS) -> str:
  arg = arg or ''
  if arg not in valid:
    raise ValueError(f'{config_file}: unknown config argument {arg!r}; '
                     f'valid: {", ".join(repr(a) for a in valid)}')
  return arg


def load(name: str, arg: str = '') -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(arg), for code and tests that need a study's recipe."""
  path = os.path.join(CONFIG_DIR, f'{name}.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config {path!r} not found (configs/ lives in the repository '
                            'checkout beside vit_jax/)')
  spec = importlib.util.spec_from_file_location(f'vit_jax_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def field(config, name: str):
  """The value of a dotted field name ('optim.lr')."""
  value = config
  for part in name.split('.'):
    value = value[part]
  return value


def check_ranges(config, ranges) -> None:
  """(field, low, high) rows: each numeric field must lie in [low, high] (a NaN does not)."""
  for name, low, high in ranges:
    value = field(config, name)
    if not low <= value <= high:
      raise ValueError(f'{name}={value} is outside [{low}, {high}]')


def check_choices(config, choices) -> None:
  """(field, accepted values) rows of the fields that name a choice."""
  for name, allowed in choices:
    if field(config, name) not in allowed:
      raise ValueError(f'{name}={field(config, name)!r} is not one of {tuple(allowed)}')


# The fields a resumed run may change: where and how fast it runs, how it is logged,
# evaluated and analysed. Any other field of the workdir's config.json must stay as it was
# trained (train/resume.py), total_epochs too unless schedule_epochs keeps the
# schedule (an extension). A name covers the fields below it.
RESUMABLE = ('trainer', 'total_epochs', 'eval_batch_size', 'checkpoint_every_epochs',
             'checkpoint_async', 'steps_in_flight', 'compilation_cache_dir', 'run_lock',
             'log_every_steps', 'start_over', 'distributed', 'dataset.workers',
             'dataset.data_dir', 'dataset.eval_crop_ratio', 'model.attention_impl', 'probe',
             'analysis', 'evaluate')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def trained(fields: dict) -> dict:
  """{dotted field: value} of a config as JSON (config.json) that fix what a run trains, the
  schedule's length (schedule_epochs) as it is in effect."""
  flat = _flat(fields)
  flat['schedule_epochs'] = flat.get('schedule_epochs') or flat['total_epochs']
  return {k: v for k, v in flat.items()
          if not any(k == r or k.startswith(r + '.') for r in RESUMABLE)}


# The fields of a run that are neither model nor data nor recipe, with their ranges.
RANGES = (('total_epochs', 1, 10**6), ('schedule_epochs', 0, 10**6),
          ('checkpoint_every_epochs', 1, 10**6),
          ('log_every_steps', 0, 10**9))


def check(config) -> None:
  """The fields of base() that no table owner checks."""
  check_ranges(config, RANGES)


def common(c: ml_collections.ConfigDict) -> None:
  """The fields of every config, whatever its trainer (base() and configs/crystallize_gpt2.py
  call this): main and the run lock read them from any config."""
  # Compiled train / eval steps are kept here and reused by the next run that compiles the
  # same program ('' = off): a warm start skips the compilation (ours).
  c.compilation_cache_dir = COMPILATION_CACHE_DIR
  # workdir/run.lock: a run on another host that has not renewed its lease for lease_s
  # seconds counts as gone (vit_jax/runlock.py); the owner renews it every renew_s.
  c.run_lock = ml_collections.ConfigDict(dict(lease_s=300.0, renew_s=60.0))


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = 'train'               # what main runs: a name in vit_jax/trainers.py
  c.seed = 0
  c.total_epochs = 100
  # The epochs the learning-rate schedule spans; 0 = total_epochs. Set below total_epochs,
  # the epochs past it train at the schedule's end (optim.min_lr), as timm's cooldown
  # epochs: how a finished run is extended without changing the schedule it was trained
  # on (ours; README, "Extending a run").
  c.schedule_epochs = 0
  c.batch_size = 256                # global, over all devices and processes
  c.eval_batch_size = 256
  c.dtype = 'float32'               # compute dtype; params stay float32
  c.checkpoint_every_epochs = 25    # kept for good; the latest is always kept too
  c.checkpoint_async = True         # epoch checkpoints written while the next epoch trains
  # The host waits for a step's loss once this many later steps are queued: a SIGTERM is
  # acted on within about that many steps (more would only let the host run further ahead).
  c.steps_in_flight = 2
  common(c)
  # A progress line (step, loss, lr, grad norm, img/s, ETA) and per-step TensorBoard
  # scalars every this many optimizer updates, 0 = off. 100 (ours): about a line a minute
  # for an ImageNet-1k epoch on one GPU, a few lines per epoch of the quick runs.
  c.log_every_steps = 100
  # Gradient accumulation (optax.MultiSteps): each optimizer update averages the gradients
  # of this many micro-batches of batch_size / grad_accum_steps; batch_size stays the global
  # batch of one update (and the lr scaling and schedule count updates). 1 = off.
  c.grad_accum_steps = 1
  # True: a workdir whose checkpoints were all set aside as unreadable (STEP.unreadable)
  # trains again from epoch 1; without it such a workdir is refused (train/resume.py).
  c.start_over = False
  # EMA of the weights (DeiT's --model-ema, timm's ModelEmaV3), updated after every
  # optimizer update and evaluated beside the raw weights each epoch. decay 0 = off
  # (DeiT-III's recipes as run here; DeiT's main.py: on, 0.99996). warmup: timm's
  # ModelEmaV3 use_warmup, decay = min(decay, 1 - (1 + n / warmup_gamma) ** -warmup_power)
  # after n updates beyond the first (0 at the first); off = the constant decay (DeiT).
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, warmup=False, warmup_gamma=1.0,
                                         warmup_power=2 / 3))

  # Multi-process runs (vit_jax/distributed.py). All empty: a SLURM or Open MPI
  # job is detected from its environment, anything else is one process.
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address='',     # HOST:PORT of process 0, reachable from every process
      num_processes=0,            # 0 = detect
      process_id=-1,              # -1 = detect
      init_timeout_s=300.0))      # start-up that takes longer stops with an error

  c.dataset = ml_collections.ConfigDict(dict(
      name='cifar100',            # sources.DATASETS: digits | fashion_mnist | cifar10 |
                                  # cifar100 | imagenet100 | imagenet2012
      data_dir='',                # tfds data_dir ('' = tfds default) or ImageFolder root
      image_size=32, num_classes=100,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),   # Normalize after ToTensor
      random_crop_padding=0,      # padded random crop on the CPU if > 0
      crop_padding_mode='constant',  # ... padded with zeros ('constant') or mirrored ('reflect')
      repeated_aug=1,             # DeiT repeated augmentation: each image k times, 1 = off
      eval_crop_ratio=0.875,      # ImageFolder evaluation: resize to size / ratio, centre crop
      workers=0))                 # grain worker processes; 0 = in the main process

  # On-device augmentation inside the jitted train step (vit_jax/data/augment.py).
  c.augment = ml_collections.ConfigDict(dict(
      hflip=False,                # random horizontal flip
      three_augment=False,        # DeiT-III: one of grayscale / solarize / blur
      color_jitter=0.0,           # ColorJitter(b, c, s) strength, 0 = off
      randaugment_layers=0,       # RandAugment ops per image, 0 = off
      randaugment_policy='timm',  # 'timm' (DeiT) | 'torchvision' (seed 000)
      randaugment_magnitude=9.0,  # timm: level in [0, 10]; torchvision: bin in 0..30
      randaugment_mstd=0.5,       # timm: std of the level (torchvision: must be 0)
      randaugment_resample='bicubic',  # geometric ops: nearest | bilinear | bicubic
      mixup=0.0, cutmix=0.0,      # Beta alphas, 0 = off
      mix_switch_prob=0.5,        # P(CutMix) when both are on
      cutmix_box='exact',         # 'exact' (timm >= 1.0) | 'floor' (timm 0.3-0.4): odd sides
      erase_prob=0.0))            # DeiT random erasing probability
  # Mixup / CutMix groups: the global batch as this many equal runs of rows, each mixed with
  # its own reverse and its own lambda / box, as DeiT's processes each mix their own batch
  # (1 = one Mixup over the whole batch: the source on one GPU). A count of the batch, not
  # of the devices: the draws depend on (seed, step) and this count only, so a run (or a
  # resume) on any number of devices or processes mixes exactly alike (a resume with
  # another count keeps the data order; only the mixing of later steps changes).
  c.augment.mix_groups = 1

  c.model = ml_collections.ConfigDict(dict(
      image_size=32, patch_size=4, width=384, depth=12, num_heads=6, mlp_ratio=4.0,
      qkv_bias=True, layerscale_init=0.0, drop_path_rate=0.0, dropout_rate=0.0,
      attention_dropout_rate=0.0, num_registers=0, pos_embed='all', distillation=False,
      gate='none', svd_tap_layers=(), svd_rank=32, head='linear', head_dropout_rate=0.0,
      layer_norm_eps=1e-6, init_scheme='deit',
      attention_impl='xla'))        # 'cudnn': fused attention on a GPU (bf16)

  c.optim = ml_collections.ConfigDict(dict(
      name='adamw', lr=5e-4, lr_scaling='none', weight_decay=0.05, decay_scope='matrices',
      b1=0.9, b2=0.999, eps=1e-8, clip_grad_norm=0.0, warmup_epochs=0.0, warmup_lr=1e-6,
      min_lr=0.0, schedule_unit='epoch', schedule_epoch_lag=0))
  # With decay_scope 'matrices': the tokens and position embedding (>= 2-D, yet no weight
  # matrices) kept out of weight decay and LAMB's trust ratio, by name: the model's
  # no_weight_decay() in the source's timm (timm >= 1.0: all four, as here).
  c.optim.no_decay_params = ('cls', 'dist', 'registers', 'pos_embedding')

  c.loss = ml_collections.ConfigDict(dict(name='softmax_xent', label_smoothing=0.0))
  # BCE targets above it become 1, the rest 0 (DeiT-III: 0.0); unset = soft targets.
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
  # sink_epsilon: a head's mean attention (over queries) to one token above this makes
  # that token a sink (Gu et al. 2025's 0.3); sink_factor: it must also exceed this many
  # times the uniform share 1/T, so near-uniform attention in short sequences is no sink.
  # top_k: how many of the largest |activations| per block to list (Sun et al. 2024 show 3).
  # register_neurons: how many MLP neurons, ranked by Jiang et al. 2025's score, move into
  # the test-time register (0: skip that pass); register_neuron_layers: only blocks up to
  # this one (1-indexed; 0 = all) are searched, as the paper searches the early-to-middle
  # blocks where high-norm tokens form. defect_tokens: at most this many tokens per block
  # whose Jacobians are averaged for the singular-defect direction (cost grows with it).
  # weights: 'raw' or 'ema' (the checkpoint's EMA, config.ema).
  c.analysis = ml_collections.ConfigDict(dict(
      checkpoint='best', num_images=4, gate_sparse_below=0.1, sink_epsilon=0.3,
      sink_factor=5.0, top_k=3, register_neurons=10, register_neuron_layers=0,
      defect_tokens=256, weights='raw'))
  # config.trainer='evaluate' (vit_jax/train/evaluate.py): top-1 / top-5 and per-class
  # accuracy of one checkpoint ('latest', 'best' or an epoch number) with its 'raw' or
  # 'ema' weights on the 'val' or 'train' split (the evaluation crop, no augmentation).
  c.evaluate = ml_collections.ConfigDict(dict(checkpoint='latest', weights='raw', split='val'))
  # With init.source set, analyze studies the imported model and the workdir is only
  # where its output goes. Its images: this folder of any images PIL opens (searched
  # recursively; the first probe.num_images in path order, centre-cropped to
  # model.image_size at dataset.eval_crop_ratio and normalised with dataset.mean / std),
  # or, when '', the data set's validation split as for a trained workdir.
  c.analysis.images = ''

  # A pretrained checkpoint to start from (vit_jax/models/pretrained.py): a timm / Hugging
  # Face checkpoint file, a folder in the hub's layout (config.json + model.safetensors),
  # or hf-hub:ORG/NAME from the local Hugging Face cache; '' = train from scratch. When
  # set, config.model's architecture fields (patch size, width, depth, heads, LayerScale,
  # registers, ...) are the checkpoint's; model.image_size (position embeddings are
  # interpolated to it, as timm does), dataset.num_classes and the regularisation fields
  # (drop_path_rate, dropouts) stay this config's. A resume restores the workdir's
  # checkpoint instead. Named `source`, not the issue's `init.from`: ml_collections parses
  # an override's path as Python, and `--config.init.from=...` is a syntax error there.
  c.init = ml_collections.ConfigDict(dict(
      source='',
      # timm's fine-tuning: a head whose class count is the data set's is kept, any other
      # is re-initialised (here with the model's own init); False re-initialises it always
      # (the same number of different classes).
      keep_head=True,
      # The checkpoint's preprocessing (its config.json pretrained_cfg: mean, std, crop_pct)
      # replaces dataset.mean, dataset.std and dataset.eval_crop_ratio, as timm's
      # resolve_data_config would, except the fields named here ('mean', 'std',
      # 'eval_crop_ratio'), which stay this config's; main adds every one of them set on the
      # command line (--config.dataset.mean=...). A checkpoint that names none (a lone
      # weights file, an .npz) leaves the config's.
      keep_preprocessing=()))
  return c


def resnet_teacher_model(arg: str = '') -> ml_collections.ConfigDict:
  """The ConvNet teacher: ResNet-50 (v2, GroupNorm) at 224; for `quick` (digits) a 2-stage
  width-16 one, for `fmnist` a 3-stage one at 28 px (ours: ~15 minutes on 2 CPU cores)."""
  if arg == 'quick':
    return ml_collections.ConfigDict(dict(arch='resnet', image_size=16, stage_sizes=(1, 1),
                                          width=16, groups=8, stem='small'))
  if arg == 'fmnist':
    return ml_collections.ConfigDict(dict(arch='resnet', image_size=28, stage_sizes=(1, 1, 1),
                                          width=16, groups=8, stem='small'))
  return ml_collections.ConfigDict(dict(arch='resnet', image_size=224, stage_sizes=(3, 4, 6, 3),
                                        width=64, groups=32, stem='imagenet'))


def digits(c: ml_collections.ConfigDict) -> None:
  """The embedded data set, with every augmentation off (ours): digits are not
  flip-invariant, and 40 epochs are too few for mixing and heavy augmentation to pay off."""
  c.batch_size = 64
  c.eval_batch_size = 128
  c.checkpoint_every_epochs = 10
  c.dtype = 'float32'               # the CPU default; bf16 is no faster here for tiny models
  c.dataset.update(name='digits', image_size=16, num_classes=10, mean=(0.5,) * 3,
                   std=(0.5,) * 3, random_crop_padding=0, workers=0, repeated_aug=1)
  c.augment.update(hflip=False, three_augment=False, color_jitter=0.0, mixup=0.0, cutmix=0.0,
                   erase_prob=0.0, randaugment_layers=0)
  c.probe.num_images = 32


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The embedded default: digits at 16x16, a 4-block width-64 model of the same variant,
  40 epochs, 2 warmup epochs, the recipe's optimizer at a small-model learning rate."""
  c.total_epochs = 40
  digits(c)
  c.model.update(image_size=16, patch_size=4, width=64, depth=4, num_heads=4, svd_rank=8,
                 svd_tap_layers=tuple(l // 3 for l in c.model.svd_tap_layers))
  c.optim.update(lr=5e-3 if c.optim.name == 'lamb' else 1e-3, lr_scaling='none',
                 warmup_epochs=2.0)
  if c.teacher.kind != 'none':
    c.teacher.model = resnet_teacher_model('quick')
  # An EMA of decay 0.99996 (DeiT) has a half-life of ~17,000 updates; the quick run makes
  # ~1,000, so its EMA would stay at the initial weights: off (ours).
  c.ema.decay = 0.0
  return c
