"""Classification losses, computed in float32 whatever the compute dtype.

Each loss has a per-example form (what evaluation sums over the real examples of a
padded batch) and its batch mean (what training minimises). tests/reference checks
them against torch and timm.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from vit_jax import config_lib


def smooth_labels(onehot: jax.Array, smoothing: float) -> jax.Array:
  """timm's mixup_target smoothing: off = smoothing / C, on = 1 - smoothing + off."""
  return onehot * (1.0 - smoothing) + smoothing / onehot.shape[-1]


def softmax_xent_per_example(logits, targets):
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_bce_per_example(logits, targets, binarize_threshold: float | None = None):
  """Independent sigmoids, mean over classes. With `binarize_threshold`, targets above it
  become 1 and the rest 0: DeiT-III's engine.py does `targets.gt(0.0)` after mixing."""
  if binarize_threshold is not None:
    targets = (targets > binarize_threshold).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(-1)


def softmax_xent(logits, targets):
  """timm's SoftTargetCrossEntropy: mean over the batch of -sum(t * log_softmax)."""
  return softmax_xent_per_example(logits, targets).mean()


def sigmoid_bce(logits, targets, binarize_threshold: float | None = None):
  """torch's BCEWithLogitsLoss(): mean over batch x classes (DeiT-III's --bce-loss)."""
  return sigmoid_bce_per_example(logits, targets, binarize_threshold).mean()


LOSSES = {'softmax_xent': softmax_xent_per_example, 'sigmoid_bce': sigmoid_bce_per_example}


def per_example_loss(loss_cfg):
  """config.loss -> f(logits, targets) of shape (B,); the name is checked by check()."""
  fn = LOSSES[loss_cfg.name]
  if loss_cfg.name == 'sigmoid_bce':
    fn = functools.partial(fn, binarize_threshold=loss_cfg.bce_target_threshold)
  return fn


def batch_loss(loss_cfg):
  """config.loss -> f(logits, targets), the batch mean that training minimises."""
  fn = per_example_loss(loss_cfg)
  return lambda logits, targets: fn(logits, targets).mean()


def topk_correct(logits, labels, k: int) -> jax.Array:
  """Per-example 1.0 if the label is among the k largest logits."""
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return (idx == labels[:, None]).any(-1).astype(jnp.float32)


DISTILLATION_KINDS = ('none', 'hard', 'soft')


def check(config) -> None:
  """config.loss names a loss of LOSSES, config.teacher a kind of distillation loss."""
  config_lib.check_choices(config, (('loss.name', tuple(LOSSES)),
                                    ('teacher.kind', DISTILLATION_KINDS)))
  config_lib.check_ranges(config, (('loss.label_smoothing', 0.0, 1.0), ('teacher.alpha', 0.0, 1.0),
                                    ('teacher.tau', 1e-6, float('inf'))))


def hard_distillation(student_logits, teacher_logits):
  """DeiT hard distillation: cross-entropy against the teacher's argmax."""
  target = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), student_logits.shape[-1])
  return optax.softmax_cross_entropy(student_logits.astype(jnp.float32), target).mean()


def soft_distillation(student_logits, teacher_logits, tau: float):
  """DeiT soft distillation: KL(teacher || student) at temperature tau, summed over batch
  and classes, times tau^2, divided by the number of logits (B x C), as DeiT's
  DistillationLoss (kl_div(..., reduction='sum') * T^2 / numel)."""
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / tau, -1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, -1)
  return (jnp.exp(log_p_t) * (log_p_t - log_p_s)).mean() * tau**2


def deit_objective(cls_logits, dist_logits, targets, teacher_logits, *, base, kind: str,
                   alpha: float, tau: float):
  """cls head on the labels, dist head on the teacher: (1 - alpha) * base + alpha * distill.

  kind 'none' (no teacher): both heads learn the labels, equally weighted (ours: DeiT's
  DistillationLoss with 'none' would train the cls head alone and leave the dist head
  untrained).
  """
  if kind not in DISTILLATION_KINDS:
    raise ValueError(f'teacher.kind={kind!r} is not one of {DISTILLATION_KINDS}')
  if kind == 'none':
    return 0.5 * base(cls_logits, targets) + 0.5 * base(dist_logits, targets)
  distill = (hard_distillation(dist_logits, teacher_logits) if kind == 'hard'
             else soft_distillation(dist_logits, teacher_logits, tau))
  return (1 - alpha) * base(cls_logits, targets) + alpha * distill
