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
