"""Seed 003 on FlaxGPT2: the override's invariants, perplexity, spectra, loading, bad input."""
import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import FlaxGPT2LMHeadModel, GPT2Config
import flax.linen as nn

from conftest import REPO, run_main
from vit_jax.crystallize import checks
from vit_jax.crystallize import data
from vit_jax.crystallize import override
from vit_jax.crystallize import small_model
from vit_jax.crystallize import study

N_LAYER, N_HEAD, WIDTH, T, VOCAB = 3, 4, 32, 12, 40
D_HEAD = WIDTH // N_HEAD


@pytest.fixture(scope='module')
def model():
  cfg = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=WIDTH, n_layer=N_LAYER,
                   n_head=N_HEAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  return FlaxGPT2LMHeadModel(cfg, seed=0)


@pytest.fixture(scope='module')
def ids():
  return np.random.default_rng(0).integers(0, VOCAB, (2, T)).astype(np.int32)


def logits(model, ids, ranks=None, bases=None, layers=None, mask=None):
  if ranks is None:
    return np.asarray(model(ids, attention_mask=mask).logits)
  with override.crystallize(ranks, bases, layers):
    return np.asarray(model(ids, attention_mask=mask).logits)


def random_bases(seed=1):
  q = np.linalg.qr(np.random.default_rng(seed).normal(size=(N_LAYER, N_HEAD, D_HEAD, D_HEAD)))[0]
  return q.astype(np.float32)


def test_full_equals_unmodified(model, ids):
  mask = np.ones_like(ids)
  mask[1, :3] = 0   # left padding in the second row: the padding mask must be respected
  ranks = override.ranks_for(N_LAYER, range(N_LAYER), 'full')
  assert np.abs(logits(model, ids, ranks) - logits(model, ids)).max() <= 1e-5
  assert np.abs(logits(model, ids, ranks, mask=mask) - logits(model, ids, mask=mask)).max() <= 1e-5


def test_lowrank_at_full_rank_equals_full(model, ids):
  ranks = override.ranks_for(N_LAYER, (1, 2), 'lowrank', D_HEAD)
  assert np.abs(logits(model, ids, ranks, random_bases()) - logits(model, ids)).max() <= 1e-5


def _capture_attention(model, ids, ranks, layer):
  """(input hidden states, output) of attention layer `layer` under `ranks`."""
  seen = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, override.FlaxGPT2Attention) and \
        override.layer_index(context.module) == layer and context.method_name == '__call__':
      seen['in'], seen['out'] = np.asarray(args[0]), np.asarray(out[0])
    return out

  with nn.intercept_methods(capture), override.crystallize(ranks):
    model(ids)
  return seen['in'], seen['out']


def test_top1_is_the_value_at_the_argmax_key(model, ids):
  layer = 1
  hidden, out = _capture_attention(model, ids, override.ranks_for(N_LAYER, [layer], 'top1'), layer)
  p = jax.tree.map(np.asarray, model.params)['transformer']['h'][str(layer)]['attn']
  qkv = hidden @ p['c_attn']['kernel'].T + p['c_attn']['bias']        # FlaxConv1D: (out, in)
  q, k, v = (x.reshape(2, T, N_HEAD, D_HEAD) for x in np.split(qkv, 3, axis=-1))
  scores = np.einsum('bqhd,bkhd->bhqk', q, k)
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
  star = scores.argmax(-1)                                            # (B, H, Q)
  assert (star <= np.arange(T)[:, None].T).all()                      # never a future key
  expected = np.stack([v[b, star[b, h], h] for b in range(2) for h in range(N_HEAD)])
  expected = expected.reshape(2, N_HEAD, T, D_HEAD).transpose(0, 2, 1, 3).reshape(2, T, WIDTH)
  expected = expected @ p['c_proj']['kernel'].T + p['c_proj']['bias']
  chex.assert_shape(out, (2, T, WIDTH))
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_mix_heads_modes():
  rng = np.random.default_rng(0)
  w = jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 2, 5, 5)) * 3), axis=-1)
  v = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
  basis = jnp.asarray(np.linalg.qr(rng.normal(size=(2, 4, 4)))[0], jnp.float32)
  full = override.mix_heads(w, v, override.FULL, basis)
  star = override.mix_heads(w, v, override.TOP1, basis)
  chex.assert_trees_all_close(full, jnp.einsum('bhqk,bkhd->bqhd', w, v), atol=1e-6)
  idx = np.asarray(w).argmax(-1)
  chex.assert_trees_all_close(star[0, 3, 1], v[0, idx[0, 1, 3], 1])
  one = override.mix_heads(w, v, 1, basis)
  eps = full - star
  proj = jnp.einsum('bqh,hd->bqhd', jnp.einsum('bqhd,hd->bqh', eps, basis[..., 0]), basis[..., 0])
  chex.assert_trees_all_close(one, star + proj, atol=1e-6)


def test_params_unchanged_and_jittable(model, ids):
  before = jax.tree.map(lambda x: (x.shape, x.dtype), model.params)
  ranks = override.ranks_for(N_LAYER, (2,), 'lowrank', 3)

  @jax.jit
  def f(params, ranks, bases, x):
    with override.crystallize(ranks, bases):
      return model(x, params=params).logits
  out = f(model.params, ranks, random_bases(), ids)
  chex.assert_shape(out, (2, T, VOCAB))
  np.testing.assert_allclose(out, logits(model, ids, ranks, random_bases()), atol=1e-5)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), model.params) == before


def test_bases_orthonormal_and_effective_dim_monotone(model, ids):
  bases, spectra = study.calibrate(model, ids, (1, 2), batch_size=2, threshold=0.9)
  chex.assert_shape(bases, (N_LAYER, N_HEAD, D_HEAD, D_HEAD))
  eye = np.eye(D_HEAD)
  for b in bases.reshape(-1, D_HEAD, D_HEAD):
    np.testing.assert_allclose(b.T @ b, eye, atol=1e-5)
  assert len(spectra) == 2 * N_HEAD
  for s in spectra:
    cumvar = np.asarray(s['cumvar'])
    assert (np.diff(cumvar) >= -1e-12).all() and cumvar[-1] == 1.0
    dims = [study.effective_dim(cumvar, t) for t in np.linspace(0.05, 1.0, 20)]
    assert dims == sorted(dims) and 1 <= dims[0] and dims[-1] <= D_HEAD
  assert study.effective_dim(np.array([0.5, 0.89, 0.9, 1.0]), 0.9) == 3


def test_spectrum_of_a_known_residual():
  """Residuals on two fixed axes with variances 9:1 -> cumvar (0.9, 1, 1, 1)."""
  eps = np.zeros((20, 4))
  eps[:10, 2], eps[10:, 0] = 3.0, 1.0
  vectors, cumvar = study.spectrum(eps.T @ eps)
  np.testing.assert_allclose(cumvar, [0.9, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(np.abs(vectors[:, 0]), [0, 0, 1, 0], atol=1e-12)


def test_perplexity_by_hand(model):
  # A bigram table: P(next | prev) known exactly, so the NLL is a sum of its logs.
  rng = np.random.default_rng(0)
  table = rng.normal(size=(5, 5))
  blocks = np.array([[0, 1, 2, 3], [4, 4, 0, 1], [2, 2, 2, 2]])
  log_p = table - np.log(np.exp(table).sum(-1, keepdims=True))
  nll = -np.mean([log_p[b[t], b[t + 1]] for b in blocks for t in range(3)])
  fn = lambda x: study.token_nll(jnp.asarray(table, jnp.float32)[x], x).sum()
  assert study.perplexity(fn, blocks, batch_size=2) == pytest.approx(np.exp(nll), rel=1e-5)
  # A GPT-2 with zero embeddings predicts uniformly: perplexity = vocabulary size.
  params = jax.tree.map(np.asarray, model.params)
  params['transformer']['wte']['embedding'] = np.zeros_like(params['transformer']['wte']['embedding'])
  plain, _ = study.nll_functions(model)
  ppl = study.perplexity(lambda x: plain(params, x), np.zeros((3, T), np.int32), 2)
  assert ppl == pytest.approx(VOCAB, rel=1e-5)


def test_blocks_are_non_overlapping():
  b = data.blocks(np.arange(10), 3)
  np.testing.assert_array_equal(b, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
  calib, evals = data.split_blocks(b, 1, 0)
  assert calib.tolist() == [[0, 1, 2]] and evals.shape == (2, 3)
  assert data.byte_ids('é').tolist() == [0xC3, 0xA9]


def test_from_pretrained_directory_round_trip(model, ids, tmp_path):
  model.save_pretrained(tmp_path / 'flax', params=model.params)
  loaded = small_model.load_pretrained(str(tmp_path / 'flax'))
  np.testing.assert_allclose(np.asarray(loaded(ids).logits), logits(model, ids), atol=1e-6)
  # safetensors written by PyTorch (GPT2LMHeadModel names, Conv1D (in, out)), no torch needed.
  from safetensors.numpy import save_file
  p = jax.tree.map(np.asarray, model.params)['transformer']
  pt = {'wte.weight': p['wte']['embedding'], 'wpe.weight': p['wpe']['embedding'],
        'ln_f.weight': p['ln_f']['scale'], 'ln_f.bias': p['ln_f']['bias']}
  for i in range(N_LAYER):
    for path, leaf in jax.tree_util.tree_flatten_with_path(p['h'][str(i)])[0]:
      names = [k.key for k in path]
      name = {'kernel': 'weight', 'scale': 'weight'}.get(names[-1], names[-1])
      pt['.'.join(['h', str(i)] + names[:-1] + [name])] = leaf.T if names[-1] == 'kernel' else leaf
  os.makedirs(tmp_path / 'pt')
  save_file({k: np.ascontiguousarray(v) for k, v in pt.items()},
            str(tmp_path / 'pt' / 'model.safetensors'), metadata={'format': 'pt'})
  model.config.save_pretrained(tmp_path / 'pt')
  from_pt = small_model.load_pretrained(str(tmp_path / 'pt'))
  np.testing.assert_allclose(np.asarray(from_pt(ids).logits), logits(model, ids), atol=1e-5)


def _load_config(arg):
  spec = importlib.util.spec_from_file_location('crys', os.path.join(REPO, 'configs',
                                                                    'crystallize_gpt2.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_config_variants(tmp_path):
  quick = _load_config('quick')
  checks.check(quick, str(tmp_path / 'run'))   # runs offline as is
  full = _load_config('')
  assert full.trainer == 'crystallize' and full.seq_len == 1024 and full.gpt2.weights == 'gpt2'
  seed = _load_config('seed')                  # seed 003's run_exp_q03, value by value
  assert (seed.seq_len, seed.text.split, seed.text.drop_empty_lines) == (256, 'validation', True)
  assert (tuple(seed.study.layers), tuple(seed.study.d_r)) == ((9, 10, 11), (1, 2, 4, 8, 16, 32))
  assert (seed.study.calib_blocks, seed.study.eval_blocks, seed.study.calib_in_scored) == (
      4, 30, True)
  with pytest.raises(ValueError, match="unknown config argument 'full'"):
    _load_config('full')


def test_seed_protocol_calibrates_on_the_first_scored_blocks():
  b = data.blocks(np.arange(40), 4)                 # 10 blocks
  calib, evals = data.split_blocks(b, 2, 5, calib_in_scored=True)
  np.testing.assert_array_equal(calib, b[:2])
  np.testing.assert_array_equal(evals, b[:5])
  calib, evals = data.split_blocks(b, 2, 5)         # held out: disjoint
  np.testing.assert_array_equal(calib, b[:2])
  np.testing.assert_array_equal(evals, b[2:7])


def test_drop_empty_lines(tmp_path):
  path = tmp_path / 'wiki.txt'
  path.write_text(' = Title = \n\n \nFirst line .\n\nSecond line .\n')
  cfg = lambda drop: type('T', (), dict(source='file', path=str(path), drop_empty_lines=drop))
  assert data.study_text(cfg(True)) == ' = Title = \n\nFirst line .\n\nSecond line .'
  assert data.study_text(cfg(False)) == path.read_text()


def test_verdict_never_counts_ranks_at_the_head_dimension():
  """At d_r >= d_head, C is full attention and recovers everything by construction."""
  curve = [dict(d_r=2, recovered=0.4), dict(d_r=4, recovered=0.7), dict(d_r=8, recovered=1.0)]
  v = study.verdict(10.0, 12.0, curve, d_head=8)
  assert 'not compressible at the tested ranks below 8' in v and 'd_r=4' in v
  v = study.verdict(10.0, 12.0, curve[:1] + [dict(d_r=4, recovered=0.95)] + curve[2:], 8)
  assert 'compressible residual: d_r=4 of 8 recovers 95%' in v
  assert 'no residual rank below' in study.verdict(10.0, 12.0, curve[2:], 8)


def _one_line_error(proc, fragment):
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert fragment in lines[0], lines[0]


@pytest.mark.parametrize('overrides,fragment', [
    (['--config.gpt2.weights=/nonexistent/gpt2'], "gpt2.weights='/nonexistent/gpt2' is neither"),
    (['--config.text.source=file', '--config.text.path=/nonexistent.txt'],
     "text.path='/nonexistent.txt' does not exist"),
    (['--config.study.layers=(2, 4)'], 'study.layers has 4, outside [0, 3] for the 4-layer model'),
    (['--config.study.d_r=(1, 64)'], 'study.d_r has 64, outside [1, 32]: the head dimension is 32'),
    (['--config.text.source=file', '--config.text.path=SHORT'],
     'the text has 11 bytes, shorter than one block of seq_len=128'),
    (['--config.gpt2.weights=NOTOKENIZER'], 'has no tokenizer (tokenizer.json, or vocab.json'),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, overrides, fragment):
  short = tmp_path / 'short.txt'
  short.write_text('hello world')
  weights = tmp_path / 'weights'            # config and weights, but no tokenizer files
  weights.mkdir()
  (weights / 'config.json').write_text(json.dumps(dict(
      vocab_size=50, n_positions=128, n_embd=32, n_layer=4, n_head=4)))
  (weights / 'model.safetensors').write_bytes(b'')
  workdir = tmp_path / 'run'
  proc = run_main(['--config', 'configs/crystallize_gpt2.py:quick', '--workdir', str(workdir)] +
                  [o.replace('SHORT', str(short)).replace('NOTOKENIZER', str(weights))
                   for o in overrides], timeout=60)
  _one_line_error(proc, fragment)
  assert not workdir.exists()


def test_tiny_study_end_to_end(tmp_path):
  """The whole quick pipeline, shrunk: trains, caches, reloads, writes JSON and plots."""
  from vit_jax.crystallize import run
  c = _load_config('quick')
  c.seq_len, c.batch_size = 32, 8
  c.small.update(n_layer=2, n_embd=32, n_head=2, train_steps=3, warmup_steps=1, log_every=3,
                 batch_size=4)
  c.study.update(layers=(1,), d_r=(1, 16), calib_blocks=2, eval_blocks=4, depth_sweep=True)
  checks.check(c, str(tmp_path))
  r = run.run(c, str(tmp_path), log=lambda *_: None)
  assert abs(r['ppl_full'] - r['ppl_baseline']) <= 1e-4 * r['ppl_baseline']
  assert r['lowrank'][-1]['ppl'] == pytest.approx(r['ppl_full'], rel=1e-4)   # d_r = d_head
  saved = json.loads((tmp_path / 'crystallize.json').read_text())
  assert saved['verdict'] == r['verdict'] and len(saved['top1_depth_sweep']) == 2
  assert {'delta_ppl_vs_dr.png', 'residual_spectra.png'} <= set(os.listdir(tmp_path / 'plots'))
  assert small_model.cached_shape(str(tmp_path))['n_layer'] == 2
  logged = []
  cached = small_model.small_model(c.small, None, c.seq_len, c.seed, str(tmp_path), logged.append)
  assert logged[0].startswith('loading the cached small GPT-2')   # no retraining
  assert cached.config.n_layer == 2 and cached.config.vocab_size == 256
