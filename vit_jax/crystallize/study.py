"""The crystallized-attention study: perplexity under each override, residual spectra, verdict.

Perplexity protocol: the token stream is cut into non-overlapping blocks of
seq_len tokens (the tail is dropped); each block is scored on its own, every
token after the first predicted from the tokens before it in the block; PPL =
exp(total token NLL / number of predicted tokens). The calibration blocks
(residual spectra and bases) come before, and are disjoint from, the scored ones,
or (study.calib_in_scored, seed 003's protocol) are the first scored ones.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.crystallize import override


def token_nll(logits, ids):
  """NLL of each next token: logits (B,T,V) at positions < T-1 predict ids[:, 1:]."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def perplexity(nll_sum, blocks: np.ndarray, batch_size: int) -> float:
  """exp(mean token NLL) over blocks; nll_sum(ids) -> summed NLL of one batch."""
  total = 0.0
  for start in range(0, len(blocks), batch_size):
    total += float(nll_sum(jnp.asarray(blocks[start:start + batch_size])))
  return float(np.exp(total / (blocks.shape[0] * (blocks.shape[1] - 1))))


def nll_functions(model):
  """Jitted summed NLL: the unmodified model, and the model under any ranks/bases."""
  def plain(params, ids):
    return token_nll(model(ids, params=params).logits, ids).sum()

  def overridden(params, ranks, bases, ids):
    with override.crystallize(ranks, bases):
      return plain(params, ids)
  return jax.jit(plain), jax.jit(overridden)


def residual_grams(model, blocks: np.ndarray, layers, batch_size: int) -> dict:
  """Per layer, the (H, D, D) float64 sum of eps eps^T over every calibration query."""
  n_layer = model.config.n_layer

  @jax.jit
  def grams(params, ids):
    ranks = override.ranks_for(n_layer, layers, 'full')
    with override.crystallize(ranks, layers=layers, collect=True):
      _, state = model.module.apply(
          {'params': params}, ids, jnp.ones_like(ids),
          jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape), mutable=['intermediates'])
    h = state['intermediates']['transformer']['h']
    return {i: h[str(i)]['attn']['residual_gram'][0] for i in layers}

  total = {}
  for start in range(0, len(blocks), batch_size):
    out = jax.device_get(grams(model.params, jnp.asarray(blocks[start:start + batch_size])))
    for i, g in out.items():
      total[i] = total.get(i, 0.0) + np.asarray(g, np.float64)
  return total


def spectrum(gram: np.ndarray):
  """Right singular vectors of the residuals (columns, by descending variance) and the
  cumulative variance ratio, from their Gram matrix eps^T eps (D, D)."""
  values, vectors = np.linalg.eigh(gram)
  order = np.argsort(values)[::-1]
  values = np.clip(values[order], 0.0, None)
  total = values.sum()
  cumvar = np.cumsum(values) / total if total > 0 else np.ones_like(values)
  cumvar[-1] = 1.0
  return vectors[:, order], cumvar


def effective_dim(cumvar: np.ndarray, threshold: float) -> int:
  """Smallest r whose top-r directions hold at least `threshold` of the variance."""
  return int(np.argmax(cumvar >= threshold - 1e-12)) + 1


def calibrate(model, calib: np.ndarray, layers, batch_size: int, threshold: float):
  """Bases (n_layer, H, D, D; identity outside `layers`) and per-(layer, head) spectra."""
  cfg = model.config
  d = cfg.n_embd // cfg.n_head
  bases = np.broadcast_to(np.eye(d, dtype=np.float32), (cfg.n_layer, cfg.n_head, d, d)).copy()
  spectra = []
  for i, gram in sorted(residual_grams(model, calib, layers, batch_size).items()):
    for h in range(cfg.n_head):
      vectors, cumvar = spectrum(gram[h])
      bases[i, h] = vectors
      spectra.append(dict(layer=i, head=h, cumvar=cumvar.tolist(),
                          effective_dim=effective_dim(cumvar, threshold)))
  return bases, spectra


def recovered(ppl_top1: float, ppl_c: float, ppl_base: float) -> float | None:
  """Share of the top-1 perplexity loss that the low-rank residual wins back (None: no loss)."""
  lost = ppl_top1 - ppl_base
  return float((ppl_top1 - ppl_c) / lost) if lost > 0 else None


def verdict(ppl_base, ppl_top1, curve, d_head, target=0.9, tolerance=0.01) -> str:
  """How much top-1 costs, and the smallest d_r < d_head that wins back `target` of it.

  At d_r >= d_head the projection keeps all of eps and model C is full attention by
  construction, so such rows cannot show compressibility and are left out here.
  """
  cost = (ppl_top1 - ppl_base) / ppl_base
  head = (f'{"crystalline" if cost <= tolerance else "not crystalline"}: top-1 attention '
          f'costs {cost:+.2%} perplexity')
  if ppl_top1 <= ppl_base:
    return head + '; there is no top-1 loss for the residual to recover'
  below = [c for c in curve if c['d_r'] < d_head]
  if not below:
    return head + f'; no residual rank below the head dimension {d_head} was tested'
  good = [c for c in below if c['recovered'] >= target]
  if good:
    c = min(good, key=lambda c: c['d_r'])
    return (head + f'; compressible residual: d_r={c["d_r"]} of {d_head} recovers '
            f'{c["recovered"]:.0%} of that loss')
  best = max(below, key=lambda c: c['recovered'])
  return (head + f'; residual not compressible at the tested ranks below {d_head}: the best, '
          f'd_r={best["d_r"]}, recovers {best["recovered"]:.0%} of that loss')


def run_study(model, calib: np.ndarray, evals: np.ndarray, study_cfg, batch_size: int,
              log=print) -> dict:
  cfg = model.config
  n_layer, d_head = cfg.n_layer, cfg.n_embd // cfg.n_head
  layers = tuple(study_cfg.layers)
  plain, overridden = nll_functions(model)
  params = model.params
  start = time.time()

  def ppl_under(ranks, bases):
    return perplexity(lambda ids: overridden(params, ranks, bases, ids), evals, batch_size)

  ppl_base = perplexity(lambda ids: plain(params, ids), evals, batch_size)
  log(f'baseline perplexity {ppl_base:.4f} on {len(evals)} blocks ({time.time() - start:.0f} s)')
  bases, spectra = calibrate(model, calib, layers, batch_size, study_cfg.variance_threshold)
  ppl_top1 = ppl_under(override.ranks_for(n_layer, layers, 'top1'), bases)
  ppl_full = ppl_under(override.ranks_for(n_layer, layers, 'full'), bases)
  log(f'A top1 {ppl_top1:.4f}, B full {ppl_full:.4f} ({time.time() - start:.0f} s)')
  curve = []
  for d_r in study_cfg.d_r:
    ppl_c = ppl_under(override.ranks_for(n_layer, layers, 'lowrank', d_r), bases)
    curve.append(dict(d_r=int(d_r), ppl=ppl_c, delta_ppl=ppl_c - ppl_base,
                      recovered=recovered(ppl_top1, ppl_c, ppl_base),
                      equals_full=bool(d_r >= d_head)))
    log(f'C lowrank d_r={d_r}: {ppl_c:.4f} ({time.time() - start:.0f} s)')
  depth = []
  for k in (range(1, n_layer + 1) if study_cfg.depth_sweep else ()):
    deepest = range(n_layer - k, n_layer)
    ppl_k = ppl_under(override.ranks_for(n_layer, deepest, 'top1'), bases)
    depth.append(dict(num_layers=k, layers=list(deepest), ppl=ppl_k, delta_ppl=ppl_k - ppl_base))
  log(f'study done ({time.time() - start:.0f} s)')
  return dict(
      layers=list(layers), d_head=d_head, n_layer=n_layer, seq_len=int(evals.shape[1]),
      calib_blocks=int(len(calib)), eval_blocks=int(len(evals)),
      calib_in_scored=bool(study_cfg.calib_in_scored),
      eval_tokens=int(evals.shape[0] * (evals.shape[1] - 1)),
      ppl_baseline=ppl_base, ppl_top1=ppl_top1, ppl_full=ppl_full,
      full_minus_baseline=ppl_full - ppl_base, lowrank=curve, top1_depth_sweep=depth,
      variance_threshold=study_cfg.variance_threshold, spectra=spectra,
      mean_effective_dim=float(np.mean([s['effective_dim'] for s in spectra])),
      verdict=verdict(ppl_base, ppl_top1, curve, d_head, study_cfg.recover_target),
      study_seconds=time.time() - start)
