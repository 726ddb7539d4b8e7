r"""`python -m vit_jax.bench seeds`: the seeds' own workloads, timed against their own code.

  python -m vit_jax.bench seeds [--out results/bench_seeds.json]

1. Seed 000: the train step of its DeiT-S/4 with SVD taps (configs/deit_svd_cifar100.py)
   against its baseline (configs/deit_cifar100.py), batch 64 at 32x32, interleaved rounds
   (the seed measured the taps 4.0x slower).
2. Seed 003: the whole crystallized-attention study (calibration spectra, perplexities of
   the baseline, top-1, full and every low rank) on one random GPT-2 saved in the hub's
   layout: ours (vit_jax.crystallize.study, JAX) against a torch transcription of the
   seed's per-head loop (residual.py's collect_residual_svd, ResidualPatch and block
   perplexity) on the same weights and blocks; the transcription is the one
   tests/reference/test_ref_crystallize.py checks the study against.
"""
import math
import os
import tempfile
import time

from absl import flags
import numpy as np

from vit_jax import config_lib
from vit_jax.bench import model as bench_model

_ROUNDS = flags.DEFINE_integer('seed_rounds', 5, '`bench seeds`: timed rounds.')
_ARG = flags.DEFINE_enum('seed000_arg', '', ['', 'fmnist'],
                         "`bench seeds`: seed 000's configs as published ('': CIFAR-100 "
                         "shapes, batch 64) or at their :fmnist size (its batch).")
_PARTS = flags.DEFINE_list('seed_parts', ['seed000', 'seed003'], '`bench seeds`: which parts.')


def _heads(module, hidden, n_head: int):
  import torch
  b, t, d = hidden.shape
  q, k, v = module.c_attn(hidden).split(d, dim=2)
  shape = lambda x: x.view(b, t, n_head, d // n_head).permute(0, 2, 1, 3)
  q, k, v = shape(q), shape(k), shape(v)
  scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // n_head)
  causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
  p = scores.masked_fill(~causal, float('-inf')).softmax(-1)
  ctx = p @ v
  star = torch.gather(v, 2, p.argmax(-1).unsqueeze(-1).expand(-1, -1, -1, d // n_head))
  return ctx, star


def seed_residual_svd(model, ids, layers, n_blocks: int, t: int):
  """Seed 003's collect_residual_svd: per (layer, head), the right singular vectors of the
  stacked residuals eps = ctx - V_{i*} over the first n_blocks blocks, one block at a
  time, and the cumulative variance of the spectrum."""
  import torch
  n_head = model.config.n_head
  bufs, hooks = {}, []
  for li in layers:
    def hook(module, inp, out, li=li):
      ctx, star = _heads(module, inp[0], n_head)
      for h in range(n_head):
        bufs.setdefault((li, h), []).append((ctx - star)[0, h].detach())
    hooks.append(model.transformer.h[li].attn.register_forward_hook(hook))
  with torch.no_grad():
    for b in range(n_blocks):
      model(input_ids=ids[b * t:(b + 1) * t].unsqueeze(0))
  for h in hooks:
    h.remove()
  basis, spectrum = {}, {}
  for key, chunks in bufs.items():
    _, s, vt = torch.linalg.svd(torch.cat(chunks, 0), full_matrices=False)
    basis[key] = vt.t()
    var = s**2
    spectrum[key] = var.cumsum(0) / var.sum()
  return basis, spectrum


class SeedPatch:
  """Seed 003's ResidualPatch: the layers' attention replaced by top1 / full / lowrank,
  head by head."""

  def __init__(self, model, layers, basis, d_r, mode):
    self.model, self.layers, self.basis, self.d_r, self.mode = model, layers, basis, d_r, mode
    self.saved = {}

  def __enter__(self):
    import torch
    n_head, width = self.model.config.n_head, self.model.config.n_embd
    for li in self.layers:
      attn = self.model.transformer.h[li].attn
      self.saved[li] = attn.forward

      def forward(hidden_states, li=li, attn=attn, **kwargs):
        ctx, star = _heads(attn, hidden_states, n_head)
        if self.mode == 'top1':
          out = star
        elif self.mode == 'full':
          out = ctx
        else:
          heads = []
          for h in range(n_head):
            pr = self.basis[(li, h)][:, :self.d_r]
            heads.append(star[:, h] + ((ctx - star)[:, h] @ pr) @ pr.t())
          out = torch.stack(heads, 1)
        b, _, t, _ = out.shape
        return attn.c_proj(out.permute(0, 2, 1, 3).reshape(b, t, width)), None
      attn.forward = forward
    return self

  def __exit__(self, *exc):
    for li, fwd in self.saved.items():
      self.model.transformer.h[li].attn.forward = fwd


def seed_perplexity(model, ids, n_blocks: int, t: int) -> float:
  """Seed 003's block perplexity: each block on its own, every token after the first."""
  import torch
  total = 0.0
  with torch.no_grad():
    for b in range(n_blocks):
      blk = ids[b * t:(b + 1) * t].unsqueeze(0)
      total += model(input_ids=blk, labels=blk).loss.item() * (t - 1)
  return math.exp(total / (n_blocks * (t - 1)))


def seed_study(model, ids, layers, d_rs, calib: int, n_blocks: int, t: int) -> dict:
  """The seed's protocol end to end: calibration spectra, then every perplexity."""
  basis, spectrum = seed_residual_svd(model, ids, layers, calib, t)
  out = {'base': seed_perplexity(model, ids, n_blocks, t), 'spectrum': spectrum}
  for mode in ('top1', 'full'):
    with SeedPatch(model, layers, basis, model.config.n_embd // model.config.n_head, mode):
      out[mode] = seed_perplexity(model, ids, n_blocks, t)
  for d_r in d_rs:
    with SeedPatch(model, layers, basis, d_r, 'lowrank'):
      out[d_r] = seed_perplexity(model, ids, n_blocks, t)
  return out


def random_gpt2(path: str, n_layer=4, n_head=4, width=128, vocab=256, t=64, seed=0):
  """A GPT-2 of random, peaked weights saved in the hub's layout; the torch model."""
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel
  torch.manual_seed(seed)
  cfg = GPT2Config(vocab_size=vocab, n_positions=t, n_embd=width, n_layer=n_layer,
                   n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  ref = GPT2LMHeadModel(cfg).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():   # weights far from init: outputs depend on attention, which is peaked
    for name, p in ref.named_parameters():
      r = torch.randn(p.shape, generator=gen)
      if name.endswith(('wte.weight', 'wpe.weight')):
        p.copy_(0.3 * r)
      elif 'ln' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * r)
      elif p.ndim == 2:                    # Conv1D weights are (in, out)
        p.copy_(r / p.shape[0] ** 0.5)
      else:
        p.copy_(0.1 * r)
    for block in ref.transformer.h:
      block.attn.c_attn.weight[:, :2 * width] *= 2.5
  ref.save_pretrained(path, safe_serialization=True)
  return ref


def study_inputs(stream: np.ndarray, layers, d_rs, calib: int, n_blocks: int, t: int):
  """(config.study, calibration blocks, scored blocks) of seed 003's protocol: calibration
  on the first `calib` of the scored blocks."""
  import ml_collections
  from vit_jax.crystallize import data
  cfg = ml_collections.ConfigDict(dict(layers=layers, d_r=d_rs, calib_blocks=calib,
                                       eval_blocks=n_blocks, calib_in_scored=True,
                                       variance_threshold=0.9, recover_target=0.9,
                                       depth_sweep=False))
  cal, evals = data.split_blocks(data.blocks(stream.astype(np.int32), t), calib, n_blocks,
                                 calib_in_scored=True)
  return cfg, cal, evals


def bench_seed003(n_blocks: int = 60, calib: int = 8, t: int = 64) -> dict:
  import torch
  from vit_jax.crystallize import small_model
  from vit_jax.crystallize import study
  torch.set_num_threads(os.cpu_count() or 1)
  layers, d_rs = (1, 2, 3), (1, 2, 4, 8, 16)
  stream = np.random.default_rng(0).integers(0, 256, (n_blocks + 1) * t).astype(np.int64)
  with tempfile.TemporaryDirectory() as tmp:
    ref = random_gpt2(tmp, t=t)
    model = small_model.load_pretrained(tmp)
  cfg, cal, evals = study_inputs(stream, layers, d_rs, calib, n_blocks, t)
  ours, theirs = [], []
  for _ in range(_ROUNDS.value + 1):          # the first round of each compiles / warms up
    t0 = time.perf_counter()
    r = study.run_study(model, cal, evals, cfg, batch_size=16, log=lambda *_: None)
    ours.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    want = seed_study(ref, torch.from_numpy(stream), layers, d_rs, calib, n_blocks, t)
    theirs.append(time.perf_counter() - t0)
  return {'blocks': n_blocks, 'seq_len': t, 'layers': list(layers), 'd_r': list(d_rs),
          'ours_s': float(np.median(ours[1:])), 'ours_first_s': ours[0],
          'seed_loop_s': float(np.median(theirs[1:])),
          'ratio': float(np.median(theirs[1:]) / np.median(ours[1:])),
          'ppl_baseline': [r['ppl_baseline'], want['base']],
          'ppl_top1': [r['ppl_top1'], want['top1']]}


def bench_seed000(arg: str = '', batch: int = 64) -> dict:
  steps = {}
  for name in ('deit_cifar100', 'deit_svd_cifar100'):
    c = config_lib.load(name, arg)
    if not arg:
      c.batch_size = c.eval_batch_size = batch
    batch = c.batch_size
    steps[name] = bench_model.JaxStep(c)
  secs = bench_model.interleaved_medians(steps, _ROUNDS.value, warmup=1)
  return {'config_arg': arg, 'image_size': c.dataset.image_size, 'width': c.model.width,
          'depth': c.model.depth, 'batch': batch, 'baseline_step_s': secs['deit_cifar100'],
          'svd_step_s': secs['deit_svd_cifar100'],
          'ratio': secs['deit_svd_cifar100'] / secs['deit_cifar100']}


def run(save) -> dict:
  r = {}
  if 'seed000' in _PARTS.value:
    r['seed000'] = s = bench_seed000(_ARG.value)
    print(f"seed 000, width {s['width']} depth {s['depth']} at {s['image_size']}x"
          f"{s['image_size']}, batch {s['batch']}: train step with SVD taps "
          f"{s['svd_step_s'] * 1e3:.1f} ms, without {s['baseline_step_s'] * 1e3:.1f} ms: "
          f"{s['ratio']:.2f}x (the seed measured 4.0x at DeiT-S/4)", flush=True)
    save(r)
  if 'seed003' not in _PARTS.value:
    return r
  r['seed003'] = g = bench_seed003()
  print(f"seed 003 study, {g['blocks']} blocks of {g['seq_len']} tokens, layers {g['layers']}, "
        f"d_r {g['d_r']}: ours {g['ours_s']:.1f} s (first call {g['ours_first_s']:.1f} s), "
        f"the seed's per-head torch loop {g['seed_loop_s']:.1f} s: seed loop / ours = "
        f"{g['ratio']:.2f}; baseline perplexity {g['ppl_baseline'][0]:.4f} vs "
        f"{g['ppl_baseline'][1]:.4f}",
        flush=True)
  return r
