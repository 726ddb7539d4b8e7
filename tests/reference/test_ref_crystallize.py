"""The GPT-2 study against transformers' PyTorch GPT-2 and a torch transcription of seed
003's algorithm (residual.py: collect_residual_svd, ResidualPatch, the block perplexity),
on one random tiny GPT-2 saved in the hub's file layout (config.json + model.safetensors)
and loaded by the study's own loader. Attention is made peaked, so top-1 differs from full
attention. Logits within 1e-5 of the largest logit (float32 through large activations);
perplexities within 1e-5 relative; residual spectra within 1e-5."""
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from vit_jax.crystallize import data
from vit_jax.crystallize import override
from vit_jax.crystallize import small_model
from vit_jax.crystallize import study

N_LAYER, N_HEAD, WIDTH, VOCAB, T = 4, 4, 32, 50, 16
D_HEAD = WIDTH // N_HEAD
LAYERS = (2, 3)


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  torch.manual_seed(0)
  cfg = GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=WIDTH, n_layer=N_LAYER,
                   n_head=N_HEAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  ref = GPT2LMHeadModel(cfg).eval()
  gen = torch.Generator().manual_seed(1)
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
      block.attn.c_attn.weight[:, :2 * WIDTH] *= 2.5
  path = tmp_path_factory.mktemp('gpt2')
  ref.save_pretrained(path, safe_serialization=True)
  assert sorted(p.name for p in path.iterdir()) == ['config.json', 'generation_config.json',
                                                    'model.safetensors']
  return ref, small_model.load_pretrained(str(path))


@pytest.fixture(scope='module')
def stream():
  return np.random.default_rng(0).integers(0, VOCAB, 40 * T).astype(np.int64)


def test_unmodified_and_full_equal_hf_pytorch(models, stream):
  ref, model = models
  ids = stream[:3 * T].reshape(3, T)
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(model(ids.astype(np.int32)).logits)
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, atol=1e-5 * scale)
  with override.crystallize(override.ranks_for(N_LAYER, range(N_LAYER), 'full')):
    full = np.asarray(model(ids.astype(np.int32)).logits)
  np.testing.assert_allclose(full, want, atol=1e-5 * scale)


# --- seed 003, transcribed --------------------------------------------------------------------

def _heads(module, hidden):
  b, t, d = hidden.shape
  q, k, v = module.c_attn(hidden).split(d, dim=2)
  shape = lambda x: x.view(b, t, N_HEAD, D_HEAD).permute(0, 2, 1, 3)
  q, k, v = shape(q), shape(k), shape(v)
  scores = (q @ k.transpose(-1, -2)) / math.sqrt(D_HEAD)
  causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
  p = scores.masked_fill(~causal, float('-inf')).softmax(-1)
  ctx = p @ v
  star = torch.gather(v, 2, p.argmax(-1).unsqueeze(-1).expand(-1, -1, -1, D_HEAD))
  return ctx, star


def seed_residual_svd(model, ids, layers, n_blocks):
  """Per (layer, head): right singular vectors of the stacked residuals eps = ctx - V_{i*}
  over the first n_blocks blocks, and the cumulative variance of the spectrum."""
  bufs, hooks = {}, []
  for li in layers:
    def hook(module, inp, out, li=li):
      ctx, star = _heads(module, inp[0])
      for h in range(N_HEAD):
        bufs.setdefault((li, h), []).append((ctx - star)[0, h].detach())
    hooks.append(model.transformer.h[li].attn.register_forward_hook(hook))
  with torch.no_grad():
    for b in range(n_blocks):
      model(input_ids=ids[b * T:(b + 1) * T].unsqueeze(0))
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
  """Seed 003's ResidualPatch: layers' attention replaced by top1 / full / lowrank."""

  def __init__(self, model, layers, basis, d_r, mode):
    self.model, self.layers, self.basis, self.d_r, self.mode = model, layers, basis, d_r, mode
    self.saved = {}

  def __enter__(self):
    for li in self.layers:
      attn = self.model.transformer.h[li].attn
      self.saved[li] = attn.forward

      def forward(hidden_states, li=li, attn=attn, **kwargs):
        ctx, star = _heads(attn, hidden_states)
        if self.mode == 'top1':
          out = star
        elif self.mode == 'full':
          out = ctx
        else:
          heads = []
          for h in range(N_HEAD):
            pr = self.basis[(li, h)][:, :self.d_r]
            heads.append(star[:, h] + ((ctx - star)[:, h] @ pr) @ pr.t())
          out = torch.stack(heads, 1)
        b, _, t, _ = out.shape
        return attn.c_proj(out.permute(0, 2, 1, 3).reshape(b, t, WIDTH)), None
      attn.forward = forward
    return self

  def __exit__(self, *exc):
    for li, fwd in self.saved.items():
      self.model.transformer.h[li].attn.forward = fwd


def seed_perplexity(model, ids, n_blocks):
  """Each block on its own, every token after the first predicted: exp(mean NLL)."""
  total = 0.0
  with torch.no_grad():
    for b in range(n_blocks):
      blk = ids[b * T:(b + 1) * T].unsqueeze(0)
      total += model(input_ids=blk, labels=blk).loss.item() * (T - 1)
  return math.exp(total / (n_blocks * (T - 1)))


def test_study_equals_seed_003(models, stream):
  """Seed 003's protocol (calibration on the first 4 scored blocks, 30 scored): every
  perplexity and every residual spectrum of the study equals the transcription's."""
  ref, model = models
  ids = torch.from_numpy(stream)
  n_blocks, calib = 30, 4
  basis, spectrum = seed_residual_svd(ref, ids, LAYERS, calib)
  want = {'base': seed_perplexity(ref, ids, n_blocks)}
  for mode in ('top1', 'full'):
    with SeedPatch(ref, LAYERS, basis, D_HEAD, mode):
      want[mode] = seed_perplexity(ref, ids, n_blocks)
  d_rs = (1, 2, 4, D_HEAD)
  for d_r in d_rs:
    with SeedPatch(ref, LAYERS, basis, d_r, 'lowrank'):
      want[d_r] = seed_perplexity(ref, ids, n_blocks)
  # Top-1 moves the perplexity by >100x the tolerance: a mode mix-up cannot pass.
  assert abs(want['top1'] / want['base'] - 1) > 1e-3

  cfg = ml_collections.ConfigDict(dict(layers=LAYERS, d_r=d_rs, calib_blocks=calib,
                                       eval_blocks=n_blocks, calib_in_scored=True,
                                       variance_threshold=0.9, recover_target=0.9,
                                       depth_sweep=False))
  cal, evals = data.split_blocks(data.blocks(stream.astype(np.int32), T), calib, n_blocks,
                                 calib_in_scored=True)
  r = study.run_study(model, cal, evals, cfg, batch_size=8, log=lambda *_: None)
  np.testing.assert_allclose(r['ppl_baseline'], want['base'], rtol=1e-5)
  np.testing.assert_allclose(r['ppl_top1'], want['top1'], rtol=1e-5)
  np.testing.assert_allclose(r['ppl_full'], want['full'], rtol=1e-5)
  for c in r['lowrank']:
    np.testing.assert_allclose(c['ppl'], want[c['d_r']], rtol=1e-5, err_msg=f'd_r {c["d_r"]}')
  for s in r['spectra']:
    np.testing.assert_allclose(s['cumvar'], spectrum[(s['layer'], s['head'])].numpy(),
                               atol=1e-5)
  # The verdict ignores d_r = d_head, where C is full attention by construction.
  assert f'd_r={D_HEAD} ' not in r['verdict']
  assert [c['equals_full'] for c in r['lowrank']] == [False, False, False, True]
