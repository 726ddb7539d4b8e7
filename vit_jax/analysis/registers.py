"""Register neurons and test-time registers (Jiang et al. 2025, "Vision Transformers
Don't Need Trained Registers").

Finder: the outlier tokens are the patch tokens whose output norm is above the
project's outlier rule (token_norms.outlier_limit). Each MLP neuron (fc1 after GELU)
of each searched block is scored by its mean activation on the outlier tokens minus
its mean activation on every other token of the same images; the highest scores are
the register neurons. (The paper ranks neurons by their activation at the outlier
positions; subtracting the mean elsewhere keeps a neuron that is large everywhere
from ranking high. Our choice.)

Move: at inference one zero token is added after the trained registers (no position
embedding, dropped at the output; vit.ViT(test_time_registers=1)); in every block,
each register neuron's activation is set to zero at every token and, at the added
token, to its largest value over the image's tokens (vit.Mlp's neuron_mask), as the
paper does. The pass is compared with the plain one: output patch-token norms
(max / median), the cls attention of the last block, and the top-1 class.
"""
import jax
import numpy as np

from vit_jax import models
from vit_jax.data import augment
from vit_jax.models import token_norms
from vit_jax.models import vit


def outlier_token_mask(output_norms: np.ndarray, lay: vit.TokenLayout, probe_cfg) -> np.ndarray:
  """(B, T) booleans over all tokens: the patch tokens that are outliers by the norm rule."""
  b, n = output_norms.shape
  mask = np.zeros((b, lay.patches.start + n), bool)
  mask[:, lay.patches] = token_norms.outlier_mask(
      np.asarray(output_norms, np.float64), probe_cfg.outlier_rule, probe_cfg.outlier_factor,
      probe_cfg.outlier_threshold)
  return mask


def neuron_scores(mlp: list, outliers: np.ndarray) -> np.ndarray:
  """(L, hidden): per block and neuron, mean activation on the outlier tokens minus the
  mean on the others. `mlp`: per block (B, T, hidden); `outliers`: (B, T) booleans."""
  if not outliers.any() or outliers.all():
    raise ValueError('neuron_scores needs both outlier and normal tokens')
  rows = []
  for h in mlp:
    h = np.asarray(h, np.float64)
    rows.append(h[outliers].mean(0) - h[~outliers].mean(0))
  return np.stack(rows)


def find_neurons(scores: np.ndarray, count: int, up_to_block: int = 0) -> list[tuple[int, int]]:
  """The `count` (block, neuron) pairs with the highest positive scores among blocks
  1..up_to_block (0: all); blocks 0-indexed in the result."""
  s = np.array(scores, np.float64)
  if up_to_block:
    s[up_to_block:] = -np.inf
  order = np.argsort(s, axis=None)[::-1][:count]
  return [tuple(int(i) for i in np.unravel_index(f, s.shape)) for f in order
          if s.flat[f] > 0]


def neuron_mask(neurons: list, depth: int, hidden: int) -> np.ndarray:
  mask = np.zeros((depth, hidden), bool)
  for block, n in neurons:
    mask[block, n] = True
  return mask


def _norm_summary(norms: np.ndarray) -> dict:
  norms = np.asarray(norms, np.float64)
  return {'max': float(norms.max()), 'median': float(np.median(norms)),
          'max_over_median': float(norms.max() / np.median(norms))}


def compare(before: dict, after: dict, labels: np.ndarray | None = None) -> dict:
  """Numbers of the plain pass and of the pass with a test-time register. Each pass:
  {'logits': (B, C), 'output_norms': (B, N), 'layer_norms': (L, B, N)}."""
  top_b, top_a = before['logits'].argmax(-1), after['logits'].argmax(-1)
  out = {'output_norms_before': _norm_summary(before['output_norms']),
         'output_norms_after': _norm_summary(after['output_norms']),
         'last_block_norms_before': _norm_summary(before['layer_norms'][-1]),
         'last_block_norms_after': _norm_summary(after['layer_norms'][-1]),
         'top1_unchanged': float((top_b == top_a).mean())}
  if labels is not None and labels.max() < before['logits'].shape[-1]:
    out['top1_before'] = float((top_b == labels).mean())
    out['top1_after'] = float((top_a == labels).mean())
  return out


def model_pass(config, params):
  """(images, test_time_registers, neuron_mask) -> {'logits', 'attn', 'output_norms',
  'layer_norms'} as numpy: a deterministic forward pass of the config's model."""
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')

  def fwd(p, x, mask, ttr):
    logits, out = model.apply({'params': p}, augment.normalize(x, config.dataset),
                              capture=True, test_time_registers=ttr, neuron_mask=mask)
    norms = token_norms.patch_token_norms(out)
    return {'logits': logits, 'attn': out['attn'], 'output_norms': norms['output'],
            'layer_norms': norms['layers']}

  jitted = jax.jit(fwd, static_argnums=3)
  return lambda images, ttr, mask: jax.device_get(jitted(params, images, mask, ttr))
