"""Optimizers of the DeiT / DeiT-III recipes, composed from optax pieces.

One mask rule decides which parameters are "weight matrices": those get
weight decay and (for LAMB) the trust ratio; everything else (biases, norms,
LayerScale gammas, and the tokens and position embeddings optim.no_decay_params
names) gets plain Adam-like updates. `optax.lamb(mask=...)` masks only the decay, not the trust
ratio, which is the bug of seed 002, so LAMB is built from its parts here.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import config_lib

# The >= 2-D parameters that are tokens or position embeddings: optim.no_decay_params names
# which of them are kept out of weight decay, as a timm model's no_weight_decay() does.
TOKEN_PARAMS = ('cls', 'dist', 'registers', 'pos_embedding')
# The SVD tap projections get no gradient (the taps are detached); torch's optimizers
# skip a parameter whose .grad is None, so in seed 000 they are not decayed either.
NO_GRADIENT_PREFIXES = ('svd_proj_',)
LR_SCALINGS = ('none', 'linear512')
DECAY_SCOPES = ('matrices', 'all')
SCHEDULE_UNITS = ('epoch', 'step')


def _gets_gradient(path) -> bool:
  return not any(getattr(p, 'key', '').startswith(NO_GRADIENT_PREFIXES) for p in path)


def check_no_decay(names) -> None:
  unknown = [n for n in names if n not in TOKEN_PARAMS]
  if unknown:
    raise ValueError(f'optim.no_decay_params={tuple(names)!r} names {unknown[0]!r}; each must '
                     f'be one of {TOKEN_PARAMS}')


def decay_mask(params, scope: str = 'matrices', no_decay=TOKEN_PARAMS):
  """Which parameters get weight decay (and, for LAMB, the trust ratio).

  'matrices' (timm's parameter groups, DeiT / DeiT-III): parameters of >= 2 dims not named
  in `no_decay` (the model's no_weight_decay(): timm >= 1.0 names every token and the
  position embedding; the timm 0.3.2 DeiT pins leaves its dist token out, so decays it).
  'all' (seed 000's torch.optim.AdamW(model.parameters())): every parameter that gets a
  gradient.
  """
  if scope not in DECAY_SCOPES:
    raise ValueError(f'optim.decay_scope={scope!r} is not one of {DECAY_SCOPES}')
  check_no_decay(no_decay)

  def decayed(path, x):
    name = getattr(path[-1], 'key', str(path[-1]))
    if not _gets_gradient(path):
      return False
    return scope == 'all' or (x.ndim >= 2 and not (len(path) == 1 and name in no_decay))
  return jax.tree_util.tree_map_with_path(decayed, params)


def mask_fn(cfg: ml_collections.ConfigDict):
  """decay_mask with config.optim's scope and names, checked now (before any work)."""
  decay_mask({}, cfg.decay_scope, cfg.no_decay_params)
  return functools.partial(decay_mask, scope=cfg.decay_scope, no_decay=cfg.no_decay_params)


def scaled_lr(cfg: ml_collections.ConfigDict, batch_size: int) -> float:
  if cfg.lr_scaling not in LR_SCALINGS:
    raise ValueError(f'optim.lr_scaling={cfg.lr_scaling!r} is not one of {LR_SCALINGS}')
  return cfg.lr * batch_size / 512 if cfg.lr_scaling == 'linear512' else cfg.lr


def cosine_lr(t, *, peak: float, total: float, warmup: float, warmup_lr: float,
              min_lr: float):
  """timm's CosineLRScheduler at time t (epochs or updates): linear warmup from
  warmup_lr over `warmup`, then min_lr + (peak - min_lr)(1 + cos(pi t / total)) / 2 with
  t counted from 0, not from the end of the warmup (timm's default, warmup_prefix=False),
  and min_lr from t = total on (one cycle)."""
  t = jnp.asarray(t, jnp.float32)
  cosine = min_lr + 0.5 * (peak - min_lr) * (1 + jnp.cos(jnp.pi * jnp.minimum(t, total) / total))
  if warmup > 0:
    ramp = warmup_lr + t * (peak - warmup_lr) / warmup
    return jnp.where(t < warmup, ramp, cosine)
  return cosine


def schedule(cfg: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int,
             total_epochs: int) -> optax.Schedule:
  """Learning rate of each update: timm's CosineLRScheduler as the sources step it.

  schedule_unit 'epoch': t is the epoch, the lr constant within it (DeiT's
  lr_scheduler.step(epoch); seed 000's CosineAnnealingLR.step() per epoch); with
  schedule_epoch_lag 1, epoch e trains at the lr of epoch e - 1 (epoch 0 at that of 0),
  because DeiT's main.py steps the scheduler with the epoch just finished. 'step': t
  is the update (timm's step_update), warmup and length in updates.
  """
  if cfg.schedule_unit not in SCHEDULE_UNITS:
    raise ValueError(f'optim.schedule_unit={cfg.schedule_unit!r} is not one of {SCHEDULE_UNITS}')
  peak = scaled_lr(cfg, batch_size)
  shape = dict(peak=peak, warmup_lr=cfg.warmup_lr if cfg.warmup_epochs else peak,
               min_lr=cfg.min_lr)
  if cfg.schedule_unit == 'step':
    return lambda step: cosine_lr(step, total=total_epochs * steps_per_epoch,
                                  warmup=cfg.warmup_epochs * steps_per_epoch, **shape)
  lag = cfg.schedule_epoch_lag
  return lambda step: cosine_lr(jnp.maximum(step // steps_per_epoch - lag, 0),
                                total=total_epochs, warmup=cfg.warmup_epochs, **shape)


def schedule_epochs(config) -> int:
  """The epochs the schedule spans: schedule_epochs, or total_epochs when it is 0."""
  return config.schedule_epochs or config.total_epochs


def lamb(lr, b1, b2, eps, weight_decay, mask) -> optax.GradientTransformation:
  """LAMB with both the decay and the trust ratio restricted to `mask`."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(lr),
  )


# optim.name -> f(config.optim, lr schedule, decay mask): the one table of optimizers.
OPTIMIZERS = {
    'adamw': lambda cfg, lr, mask: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                               weight_decay=cfg.weight_decay, mask=mask),
    'lamb': lambda cfg, lr, mask: lamb(lr, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, mask),
    'sgd': lambda cfg, lr, mask: optax.chain(  # b1 is the (Nesterov) momentum
        optax.add_decayed_weights(cfg.weight_decay, mask=mask),
        optax.sgd(lr, momentum=cfg.b1, nesterov=True)),
}


# Learning rates and decay are not negative (a NaN is outside every range).
RANGES = (('optim.warmup_lr', 0.0, float('inf')),
          ('optim.min_lr', 0.0, float('inf')), ('optim.weight_decay', 0.0, float('inf')),
          ('optim.clip_grad_norm', 0.0, float('inf')), ('optim.warmup_epochs', 0.0, 10**6),
          ('optim.schedule_epoch_lag', 0, 10**6))


def check(config) -> None:
  """config.optim names an optimizer of OPTIMIZERS, a schedule and a decay rule it can build,
  with a learning rate that can train."""
  c = config.optim
  config_lib.check_choices(config, (('optim.name', tuple(OPTIMIZERS)),
                                    ('optim.schedule_unit', SCHEDULE_UNITS),
                                    ('optim.decay_scope', DECAY_SCOPES)))
  if not 0 < c.lr < float('inf'):   # NaN included
    raise ValueError(f'optim.lr={c.lr} must be a finite number > 0')
  config_lib.check_ranges(config, RANGES)
  scaled_lr(c, config.batch_size)
  mask_fn(c)


def build(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f'optim.name={cfg.name!r} is not one of {tuple(OPTIMIZERS)}')
  opt = OPTIMIZERS[cfg.name](cfg, lr, mask_fn(cfg))
  if cfg.clip_grad_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), opt)
  return opt
