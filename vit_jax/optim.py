"""Optimizers of the DeiT / DeiT-III recipes, composed from optax pieces.

One mask rule decides which parameters are "weight matrices": those get
weight decay and (for LAMB) the trust ratio; everything else (biases, norms,
LayerScale gammas, cls/dist/register tokens, position embeddings) gets plain
Adam-like updates. `optax.lamb(mask=...)` masks only the decay, not the trust
ratio, which is the bug of seed 002, so LAMB is built from its parts here.
"""
import jax
import ml_collections
import optax

# Parameters that are tokens or embeddings, never decayed, even though >= 2-D.
NO_DECAY_NAMES = frozenset({'cls', 'dist', 'registers', 'pos_embedding'})
OPTIMIZERS = ('adamw', 'lamb', 'sgd')
LR_SCALINGS = ('none', 'linear512')


def decay_mask(params):
  """True for weight matrices (kernels of >= 2 dims), False for all else."""
  def is_matrix(path, x):
    name = getattr(path[-1], 'key', str(path[-1]))
    return x.ndim >= 2 and name not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def scaled_lr(cfg: ml_collections.ConfigDict, batch_size: int) -> float:
  if cfg.lr_scaling not in LR_SCALINGS:
    raise ValueError(f'optim.lr_scaling={cfg.lr_scaling!r} is not one of {LR_SCALINGS}')
  return cfg.lr * batch_size / 512 if cfg.lr_scaling == 'linear512' else cfg.lr


def schedule(cfg: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int,
             total_epochs: int) -> optax.Schedule:
  """Per-step linear warmup from warmup_lr, then cosine decay to min_lr."""
  peak = scaled_lr(cfg, batch_size)
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  total = max(total_epochs * steps_per_epoch, warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.warmup_lr if warmup else peak, peak_value=peak,
      warmup_steps=warmup, decay_steps=total, end_value=cfg.min_lr)


def lamb(lr, b1, b2, eps, weight_decay, mask) -> optax.GradientTransformation:
  """LAMB with both the decay and the trust ratio restricted to `mask`."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(lr),
  )


def build(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f'optim.name={cfg.name!r} is not one of {OPTIMIZERS}')
  if cfg.name == 'lamb':
    opt = lamb(lr, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, decay_mask)
  elif cfg.name == 'adamw':
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  else:
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                      optax.sgd(lr, momentum=cfg.b1, nesterov=True))
  if cfg.clip_grad_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), opt)
  return opt
