"""The ViT family against timm's VisionTransformer / VisionTransformerDistilled and a torch
transcription of seed 000's model, on identical weights (converted by
vit_jax.models.convert) and images. Logits within 1e-5 (1e-4 with SVD taps: float32
eigh of nearly degenerate Gram matrices)."""
import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from vit_jax.models import convert
from vit_jax.models import vit
from refutil import Seed000, gram_eigh_svd, images as _images, mean_peak, randomize_, svd_features

SHAPE = dict(image_size=32, patch_size=8, width=48, depth=3, num_heads=4, mlp_ratio=2.0)
TIMM_SHAPE = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0,
                  num_classes=7)
LOGITS_ATOL = 1e-5


@pytest.fixture
def images():
  return _images()


class G1Attention(Attention):
  """timm's own gated Attention: sigmoid(x W_g) on the SDPA output, before the projection."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, gated=True, **kwargs)


class G2Attention(Attention):
  """G2 (no timm counterpart; written here): sigmoid(x W_g) multiplies the values."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, gated=True, **kwargs)

  def forward(self, x, attn_mask=None, is_causal=False):
    b, n, _ = x.shape
    gate = self.gate(x).sigmoid().reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
    x = (attn @ (v * gate)).transpose(1, 2).reshape(b, n, self.attn_dim)
    return self.proj(x)


def _nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _compare(torch_model, model, images, layout='timm', atol=LOGITS_ATOL, drop=()):
  torch_model.eval()
  state = {k: v for k, v in torch_model.state_dict().items() if k not in drop}
  params = convert.from_torch(state, model, layout)
  with torch.no_grad():
    want = torch_model(_nchw(images)).numpy()
  got, out = model.apply({'params': params}, jnp.asarray(images), capture=True)
  chex.assert_shape(got, want.shape)
  # Peaked attention (uniform would be 1/T), so a mistake in q/k/v cannot hide.
  tokens = out['attn'][0].shape[-1]
  assert mean_peak(out['attn']) > 4.0 / tokens
  np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=0)
  return params


@pytest.mark.parametrize('registers', [0, 4])
def test_deit3_vanilla_and_registers_match_timm(images, registers):
  ref = VisionTransformer(**TIMM_SHAPE, init_values=1e-4, no_embed_class=True,
                          reg_tokens=registers)
  randomize_(ref, seed=registers)
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4, pos_embed='patches',
                  num_registers=registers)
  _compare(ref, model, images)


@pytest.mark.parametrize('gate,attn_layer', [('g1', G1Attention), ('g2', G2Attention)])
def test_gated_attention_matches_timm(images, gate, attn_layer):
  ref = VisionTransformer(**TIMM_SHAPE, init_values=1e-4, no_embed_class=True,
                          attn_layer=attn_layer)
  randomize_(ref, seed=3)
  with torch.no_grad():   # our gate has no bias (Qiu et al.); timm's has one when qkv_bias
    for block in ref.blocks:
      block.attn.gate.bias.zero_()
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4, pos_embed='patches', gate=gate)
  drop = [f'blocks.{i}.attn.gate.bias' for i in range(3)]
  _compare(ref, model, images, drop=drop)


def test_distilled_deit_matches_timm(images):
  ref = VisionTransformerDistilled(**TIMM_SHAPE)
  randomize_(ref, seed=4)
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='all',
                  distillation=True)
  _compare(ref, model, images)


def test_comparison_detects_a_qk_swap(images):
  """The deliberate mistake: with q and k of one block swapped, the logits move far."""
  ref = VisionTransformer(**TIMM_SHAPE, init_values=1e-4, no_embed_class=True).eval()
  randomize_(ref, seed=5)
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4, pos_embed='patches')
  params = _compare(ref, model, images)
  kernel = params['block_1']['attn']['qkv']['kernel']
  q, k, v = np.split(kernel, 3, axis=1)
  params['block_1']['attn']['qkv']['kernel'] = np.concatenate([k, q, v], 1)
  bias = params['block_1']['attn']['qkv']['bias']
  q, k, v = np.split(bias, 3)
  params['block_1']['attn']['qkv']['bias'] = np.concatenate([k, q, v])
  with torch.no_grad():
    want = ref(_nchw(images)).numpy()
  got = model.apply({'params': params}, jnp.asarray(images))[0]
  assert np.abs(np.asarray(got) - want).max() > 100 * LOGITS_ATOL


# --- seed 000 -------------------------------------------------------------------

@pytest.mark.parametrize('taps,atol', [((), LOGITS_ATOL), ((1, 3), 1e-4)])
def test_seed000_model_matches_torch(images, taps, atol):
  torch.manual_seed(0)
  ref = Seed000(7, 32, 8, 48, 3, 4, 2.0, taps=taps)
  randomize_(ref, seed=6)
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='all', head='mlp',
                  layer_norm_eps=1e-5, svd_tap_layers=taps, svd_rank=4, init_scheme='seed000')
  _compare(ref, model, images, layout='seed000', atol=atol)


def test_converter_names_the_first_tensor_that_does_not_fit():
  ref = VisionTransformer(**TIMM_SHAPE, init_values=1e-4, no_embed_class=True)
  state = ref.state_dict()
  wide = vit.ViT(num_classes=7, **{**SHAPE, 'mlp_ratio': 4.0}, layerscale_init=1e-4,
                 pos_embed='patches')
  with pytest.raises(ValueError, match=r"blocks.0.mlp.fc1.bias of shape \(96,\) does not "
                                       r"fit parameter block_0/mlp/fc1/bias of shape \(192,\)"):
    convert.from_torch(state, wide)
  plain = vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='patches')
  with pytest.raises(ValueError, match=r"tensor 'blocks.0.ls1.gamma' \(48,\) has no place"):
    convert.from_torch(state, plain)
  registers = vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4, pos_embed='patches',
                      num_registers=4)
  with pytest.raises(ValueError, match=r"no 'reg_token' for parameter registers \(1, 4, 48\)"):
    convert.from_torch(state, registers)


# --- initialisation -----------------------------------------------------------------

def _moments(x):
  """(std, kurtosis): the kurtosis tells a normal (3) from a uniform (1.8)."""
  x = np.asarray(x, np.float64).ravel()
  x = x - x.mean()
  return x.std(), (x**4).mean() / x.var() ** 2


def _torch_init(fn, shape):
  t = torch.empty(shape)
  fn(t)
  return t.numpy()


@pytest.mark.parametrize('scheme', ['deit', 'seed000'])
def test_init_follows_the_source(scheme):
  """Each initialiser against the source's own torch initialiser on a tensor of the same
  shape (torch layout): std within 3%, kurtosis within 0.15 (10% and 0.3 for the conv
  bias, which has only 384 entries)."""
  torch.manual_seed(0)
  width, patch, size = 384, 8, 128     # 256 patches: every tensor has >= 98k entries
  model = vit.ViT(num_classes=10, image_size=size, patch_size=patch, width=width, depth=1,
                  num_heads=6, layerscale_init=1e-4, pos_embed='all', num_registers=4,
                  init_scheme=scheme)
  params = jax.jit(lambda k: model.init({'params': k}, jnp.zeros((1, size, size, 3))))(
      jax.random.key(0))['params']
  conv = nn.Conv2d(3, width, patch, stride=patch)       # torch's default conv init
  trunc02 = lambda t: nn.init.trunc_normal_(t, std=0.02)
  if scheme == 'deit':   # DeiT / DeiT-III code: trunc_normal_(.02) on Linear, cls, pos
    expect = {
        'patch_embed/kernel': conv.weight.detach().numpy(),
        'patch_embed/bias': conv.bias.detach().numpy(),
        'block_0/attn/qkv/kernel': _torch_init(trunc02, (3 * width, width)),
        'pos_embedding': _torch_init(trunc02, (1, 257, width)),
        'registers': _torch_init(lambda t: nn.init.normal_(t, std=1e-6), (1, 256, width))}
  else:                  # seed 000's _init_weights, and MultiheadAttention's own in_proj
    mha = nn.MultiheadAttention(width, 6)
    expect = {
        'patch_embed/kernel': _torch_init(lambda t: nn.init.kaiming_normal_(t, mode='fan_out'),
                                          conv.weight.shape),
        'block_0/attn/qkv/kernel': mha.in_proj_weight.detach().numpy(),
        'pos_embedding': (torch.randn(1, 257, width) * 0.02).numpy()}
    np.testing.assert_array_equal(params['patch_embed']['bias'], 0.0)
    np.testing.assert_array_equal(params['block_0']['attn']['qkv']['bias'], 0.0)
  expect['block_0/mlp/fc1/kernel'] = _torch_init(trunc02, (4 * width, width))
  for path, want in expect.items():
    got = params
    for part in path.split('/'):
      got = got[part]
    (s_got, k_got), (s_want, k_want) = _moments(got), _moments(want)
    small = np.size(got) < 10_000
    assert s_got == pytest.approx(s_want, rel=0.1 if small else 0.03), (path, s_got, s_want)
    assert k_got == pytest.approx(k_want, abs=0.3 if small else 0.15), (path, k_got, k_want)


# --- training mode: drop-path ------------------------------------------------------------

# Per-sample keep masks, in call order: block 1 attention and MLP branches, then block 2's
# (block 0's rate is 0: neither side draws). Each drops someone, and keeps someone.
MASKS = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]]
DROP_PATH = 0.3


class _MaskFeed:
  """Hands out MASKS in turn to whichever side asks, recording the keep probability."""

  def __init__(self):
    self.keeps, self.i = [], 0

  def next(self, keep):
    self.keeps.append(float(keep))
    self.i += 1
    return np.asarray(MASKS[self.i - 1], bool)


def _drop_path_pair(monkeypatch):
  """timm's ViT with drop_path_rate (linspace over depth) and ours, same weights; both
  sides' per-sample Bernoulli draws replaced by MASKS: timm's drop_path calls
  Tensor.bernoulli_(keep), ours jax.random.bernoulli(key, keep, shape)."""
  ref = VisionTransformer(**TIMM_SHAPE, init_values=1e-4, no_embed_class=True,
                          drop_path_rate=DROP_PATH)
  randomize_(ref, seed=7)
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4, pos_embed='patches',
                  drop_path_rate=DROP_PATH)
  feeds = _MaskFeed(), _MaskFeed()

  def torch_bernoulli(t, p=0.5, **kw):
    return t.copy_(torch.from_numpy(feeds[0].next(p)).reshape(t.shape))

  def jax_bernoulli(key, p=0.5, shape=None):
    return jnp.asarray(feeds[1].next(p)).reshape(shape)

  monkeypatch.setattr(torch.Tensor, 'bernoulli_', torch_bernoulli)
  monkeypatch.setattr(jax.random, 'bernoulli', jax_bernoulli)
  return ref, model, feeds


def _check_feeds(feeds):
  """Both sides drew every mask, with timm's keep probabilities (1 - 0.15, 1 - 0.3)."""
  theirs, ours = feeds
  assert theirs.i == ours.i == len(MASKS)
  np.testing.assert_allclose(theirs.keeps, [0.85, 0.85, 0.7, 0.7], rtol=1e-6)
  np.testing.assert_allclose(ours.keeps, theirs.keeps, rtol=1e-6)


def test_training_forward_with_drop_path_matches_timm_given_the_same_masks(monkeypatch, images):
  ref, model, feeds = _drop_path_pair(monkeypatch)
  params = convert.from_torch(ref.state_dict(), model, 'timm')
  ref.train()
  with torch.no_grad():
    want = ref(_nchw(images)).numpy()
  got, _ = model.apply({'params': params}, jnp.asarray(images), train=True,
                       rngs={'dropout': jax.random.key(0)})
  _check_feeds(feeds)
  np.testing.assert_allclose(np.asarray(got), want, atol=LOGITS_ATOL, rtol=0)
  ref.eval()     # the masks matter: without them the logits are far apart
  with torch.no_grad():
    assert np.abs(ref(_nchw(images)).numpy() - want).max() > 100 * LOGITS_ATOL


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_train_step_forward_is_the_training_one(monkeypatch, smoothing):
  """The train step's loss is torch's cross-entropy (with config.loss.label_smoothing) of
  timm's training-mode logits under the same masks, no augmentation: the step runs the
  model with drop-path and smooths its targets."""
  from vit_jax import config_lib
  from vit_jax.train import steps
  ref, model, feeds = _drop_path_pair(monkeypatch)
  c = config_lib.base()
  c.model.update(image_size=32, patch_size=8, width=48, depth=3, num_heads=4, mlp_ratio=2.0,
                 layerscale_init=1e-4, pos_embed='patches', drop_path_rate=DROP_PATH)
  c.dataset.update(num_classes=7)
  c.loss.label_smoothing = smoothing
  c.batch_size = 3
  compiled = steps.CompiledSteps(c)
  params = convert.from_torch(ref.state_dict(), model, 'timm')
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
  state = compiled.setup(steps_per_epoch=1, start=flat)
  pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  labels = np.array([1, 5, 6], np.int32)
  _, metrics = compiled.train_step(state, compiled.global_batch({'image': pixels,
                                                               'label': labels}))
  x = (pixels / 255.0 - np.asarray(c.dataset.mean)) / np.asarray(c.dataset.std)
  ref.train()
  with torch.no_grad():
    want = torch.nn.functional.cross_entropy(ref(_nchw(x.astype(np.float32))),
                                             torch.from_numpy(labels).long(),
                                             label_smoothing=smoothing).item()
  _check_feeds(feeds)
  assert float(metrics['loss']) == pytest.approx(want, rel=1e-5)


def test_svd_taps_read_only_the_patch_tokens(images):
  """With 2 registers between cls and the patches, each tap summarises the patch tokens of
  its block only: the logits equal the linear head over [final-normed cls, seed 000's
  summary (refutil's torch transcription, float64) of (block output's last 16 tokens x the
  tap's projection)] within 1e-4 (float32 eigh). The registers are set far from their
  1e-6 init, so that a tap reading them would show."""
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='patches',
                  num_registers=2, svd_tap_layers=(1, 3), svd_rank=4)
  params = model.init(jax.random.key(0), jnp.asarray(images))['params']
  params['registers'] = 3.0 * jax.random.normal(jax.random.key(1), params['registers'].shape)
  logits, out = model.apply({'params': params}, jnp.asarray(images), capture=True)
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  feats = []
  for i, layer in enumerate((1, 3)):
    patches = t(out['blocks'][layer - 1])[:, -16:]          # (32 / 8)^2 patches, last
    h = patches @ t(params[f'svd_proj_{i}']['kernel'])
    feats.append(svd_features(*gram_eigh_svd(h)))
  head = params['head']['out']
  want = torch.cat([t(out['pre_logits'])] + feats, -1) @ t(head['kernel']) + t(head['bias'])
  np.testing.assert_allclose(np.asarray(logits), want.numpy(), atol=1e-4, rtol=0)
