"""Per-token L2 norms and the outlier rule used for high-norm artifacts."""
import numpy as np

OUTLIER_RULES = ('relative', 'absolute')


def outlier_mask(norms: np.ndarray, rule: str, factor: float, threshold: float) -> np.ndarray:
  """'relative': norm > factor * median of all norms; 'absolute': norm > threshold."""
  if rule == 'relative':
    return norms > factor * np.median(norms)
  if rule == 'absolute':
    return norms > threshold
  raise ValueError(f'probe.outlier_rule={rule!r} is not one of {OUTLIER_RULES}')


def stats(norms: np.ndarray, probe_cfg) -> dict:
  norms = np.asarray(norms, np.float64)
  out = outlier_mask(norms, probe_cfg.outlier_rule, probe_cfg.outlier_factor,
                     probe_cfg.outlier_threshold)
  return {'l2_norm_mean': float(norms.mean()), 'l2_norm_std': float(norms.std()),
          'l2_outlier_ratio': float(out.mean())}
