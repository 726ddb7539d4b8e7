"""Classification losses, computed in float32 whatever the compute dtype."""
import jax
import jax.numpy as jnp
import optax


def smooth_labels(onehot: jax.Array, smoothing: float) -> jax.Array:
  return onehot * (1.0 - smoothing) + smoothing / onehot.shape[-1]


def softmax_xent(logits, targets):
  """Mean cross-entropy against (possibly soft) target distributions."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def sigmoid_bce(logits, targets, binarize_threshold: float | None = None):
  """DeiT-III's BCE: independent sigmoids per class, summed over classes, mean over batch.

  With `binarize_threshold`, mixed targets above it become 1 and the rest 0
  (DeiT-III's --bce-target-thresh).
  """
  if binarize_threshold is not None:
    targets = (targets > binarize_threshold).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).sum(-1).mean()


LOSSES = {'softmax_xent': softmax_xent, 'sigmoid_bce': sigmoid_bce}


def topk_correct(logits, labels, k: int) -> jax.Array:
  """Per-example 1.0 if the label is among the k largest logits."""
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return (idx == labels[:, None]).any(-1).astype(jnp.float32)


DISTILLATION_KINDS = ('none', 'hard', 'soft')


def hard_distillation(student_logits, teacher_logits):
  """DeiT hard distillation: cross-entropy against the teacher's argmax."""
  target = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), student_logits.shape[-1])
  return optax.softmax_cross_entropy(student_logits.astype(jnp.float32), target).mean()


def soft_distillation(student_logits, teacher_logits, tau: float):
  """KL(teacher || student) at temperature tau, times tau^2 (per example, mean over batch)."""
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / tau, -1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, -1)
  return (jnp.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1).mean() * tau**2


def deit_objective(cls_logits, dist_logits, targets, teacher_logits, *, base, kind: str,
                   alpha: float, tau: float):
  """cls head on the labels, dist head on the teacher: (1 - alpha) * base + alpha * distill.

  kind 'none' (no teacher): both heads learn the labels, equally weighted.
  """
  if kind not in DISTILLATION_KINDS:
    raise ValueError(f'teacher.kind={kind!r} is not one of {DISTILLATION_KINDS}')
  if kind == 'none':
    return 0.5 * base(cls_logits, targets) + 0.5 * base(dist_logits, targets)
  distill = (hard_distillation(dist_logits, teacher_logits) if kind == 'hard'
             else soft_distillation(dist_logits, teacher_logits, tau))
  return (1 - alpha) * base(cls_logits, targets) + alpha * distill
