"""The GPT-2 study against transformers' PyTorch GPT-2 and a torch transcription of seed
003's algorithm (residual.py: collect_residual_svd, ResidualPatch, the block perplexity;
in vit_jax/bench/seeds.py, which also times it against the study),
on one random tiny GPT-2 saved in the hub's file layout (config.json + model.safetensors)
and loaded by the study's own loader. Attention is made peaked, so top-1 differs from full
attention. Logits within 1e-5 of the largest logit (float32 through large activations);
perplexities within 1e-5 relative; residual spectra within 1e-5."""

import numpy as np
import pytest
import torch

from vit_jax.bench import seeds
from vit_jax.crystallize import override
from vit_jax.crystallize import small_model
from vit_jax.crystallize import study

N_LAYER, N_HEAD, WIDTH, VOCAB, T = 4, 4, 32, 50, 16
D_HEAD = WIDTH // N_HEAD
LAYERS = (2, 3)


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  path = tmp_path_factory.mktemp('gpt2')
  ref = seeds.random_gpt2(str(path), n_layer=N_LAYER, n_head=N_HEAD, width=WIDTH, vocab=VOCAB,
                          t=T, seed=0)
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

def test_study_equals_seed_003(models, stream):
  """Seed 003's protocol (calibration on the first 4 scored blocks, 30 scored): every
  perplexity and every residual spectrum of the study equals the transcription's."""
  ref, model = models
  ids = torch.from_numpy(stream)
  n_blocks, calib = 30, 4
  d_rs = (1, 2, 4, D_HEAD)
  want = seeds.seed_study(ref, ids, LAYERS, d_rs, calib, n_blocks, T)
  spectrum = want['spectrum']
  # Top-1 moves the perplexity by >100x the tolerance: a mode mix-up cannot pass.
  assert abs(want['top1'] / want['base'] - 1) > 1e-3

  cfg, cal, evals = seeds.study_inputs(stream, LAYERS, d_rs, calib, n_blocks, T)
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
