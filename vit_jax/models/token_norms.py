"""Per-token L2 norms and the outlier rule used for high-norm artifacts."""
import jax.numpy as jnp
import numpy as np

from vit_jax import config_lib

OUTLIER_RULES = ('relative', 'absolute')


def check(config) -> None:
  """config.probe: an outlier rule of OUTLIER_RULES, a probe batch of some images."""
  config_lib.check_choices(config, (('probe.outlier_rule', OUTLIER_RULES),))
  config_lib.check_ranges(config, (('probe.num_images', 1, 10**6),))


def patch_token_norms(out: dict) -> dict:
  """L2 norms of the patch tokens of a model's `out` dict (from capture=True).

  'output' (B, N) is after the final LayerNorm (what Darcet et al. measure);
  'layers' (L, B, N) is the residual stream after each block, for ViTs only
  (a ResNet has no blocks). Patches are the last N tokens of every block.
  """
  n = out['patch_tokens'].shape[1]
  norms = {'output': jnp.linalg.norm(out['patch_tokens'].astype(jnp.float32), axis=-1)}
  if out.get('blocks'):
    norms['layers'] = jnp.stack([jnp.linalg.norm(b[:, -n:].astype(jnp.float32), axis=-1)
                                 for b in out['blocks']])
  return norms


def outlier_limit(norms: np.ndarray, rule: str, factor: float, threshold: float) -> float:
  """The norm above which a token is an outlier: 'relative', factor * the median of all
  norms; 'absolute', the threshold."""
  if rule == 'relative':
    return float(factor * np.median(norms))
  if rule == 'absolute':
    return float(threshold)
  raise ValueError(f'probe.outlier_rule={rule!r} is not one of {OUTLIER_RULES}')


def outlier_mask(norms: np.ndarray, rule: str, factor: float, threshold: float) -> np.ndarray:
  return norms > outlier_limit(norms, rule, factor, threshold)


def stats(norms: np.ndarray, probe_cfg) -> dict:
  norms = np.asarray(norms, np.float64)
  out = outlier_mask(norms, probe_cfg.outlier_rule, probe_cfg.outlier_factor,
                     probe_cfg.outlier_threshold)
  return {'l2_norm_mean': float(norms.mean()), 'l2_norm_std': float(norms.std()),
          'l2_outlier_ratio': float(out.mean())}
