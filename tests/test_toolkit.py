"""The artifact toolkit on constructed cases whose answers are derived by hand: outlier
metrics, sink rate and the sink rule, entropy, rollout, singular defects, register
neurons and test-time registers, and plots on one shared colour scale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import config_lib
from vit_jax import models
from vit_jax.analysis import attention
from vit_jax.analysis import defects
from vit_jax.analysis import outliers
from vit_jax.analysis import plots
from vit_jax.analysis import registers
from vit_jax.analysis import stats
from vit_jax.models import vit

LAY = vit.TokenLayout(1, 1, 2)   # [cls, register, patch, patch]


def test_kurtosis_per_token_over_channels_by_hand():
  # token 1: [1, -1, 1, -1]: mean 0, var 1, fourth moment 1 -> 1.
  # token 2: [2, 0, 0, 0]: mean 0.5, deviations (1.5, -0.5 x3): var 0.75,
  # fourth moment (5.0625 + 3 * 0.0625) / 4 = 1.3125 -> 1.3125 / 0.5625 = 7/3.
  x = np.array([[[1., -1., 1., -1.], [2., 0., 0., 0.]]])
  assert outliers.kurtosis(x) == pytest.approx((1 + 7 / 3) / 2)
  g = np.random.default_rng(0).normal(size=(4, 50, 4000))
  assert outliers.kurtosis(g) == pytest.approx(3.0, abs=0.05)   # a normal: 3, not 0


def test_a_planted_massive_activation_is_listed_with_its_token_and_channel():
  x = np.random.default_rng(1).normal(size=(2, 4, 8))
  x[1, 3, 5] = -100.0
  x[0, 1, 2] = 60.0
  rows = outliers.block_rows([x], LAY, k=3)
  top = rows[0]['top']
  assert [(t['image'], t['token'], t['kind'], t['channel']) for t in top[:2]] == [
      (1, 3, 'patch', 5), (0, 1, 'register', 2)]
  assert top[0]['value'] == -100.0 and rows[0]['max_abs'] == 100.0
  assert top[0]['over_median'] == pytest.approx(100.0 / np.median(np.abs(x)))
  assert len(top) == 3 and abs(top[2]['value']) < 60


def test_near_uniform_attention_has_no_sink_and_a_planted_one_does():
  # The case: peak 0.0063 against uniform 0.0050 (T = 200) is no sink.
  t = 200
  lay = vit.TokenLayout(1, 4, t - 5)
  near = np.full((1, 2, t, t), 1.0 / t)
  near[..., 7] += 0.0013
  near[..., 8] -= 0.0013
  row, = stats.attention_stats([near], lay, epsilon=0.3, factor=5.0)
  assert row['sink_kind'] == 'none' and row['sink_share'] == pytest.approx(0.0063)
  assert attention.sink_rate([near], lay, 0.3) == {
      'cls': 0.0, 'register': 0.0, 'patch': 0.0, 'any': 0.0}
  # head 1 sends 0.8 of every query's attention to register 2 (index 3): averaged over
  # the heads (attention_stats' share) 0.4 + 0.0025, above 0.3
  planted = near.copy()
  planted[0, 1] = 0.2 / (t - 1)
  planted[0, 1, :, 3] = 0.8
  row, = stats.attention_stats([planted], lay, epsilon=0.3, factor=5.0)
  assert row['sink_kind'] == 'register' and row['sink_index'] == 3
  assert row['sink_images'] == 1.0
  # the sink in one image of four is not the layer's sink; in two of four it is
  one_of_four = np.concatenate([planted] + [near] * 3)
  row, = stats.attention_stats([one_of_four], lay, epsilon=0.3, factor=5.0)
  assert row['sink_kind'] == 'none' and row['sink_images'] == 0.25
  row, = stats.attention_stats([np.concatenate([planted] * 2 + [near] * 2)], lay)
  assert row['sink_kind'] == 'register' and row['sink_images'] == 0.5
  # two layers x two heads, one of the four pairs has a register sink
  assert attention.sink_rate([near, planted], lay, 0.3) == {
      'cls': 0.0, 'register': 0.25, 'patch': 0.0, 'any': 0.25}
  assert stats.is_sink(0.3, 4, 0.3, 5.0) == False   # in 4 tokens: needs > 5/4, never
  assert stats.is_sink(0.31, 100, 0.3, 5.0) == True


def test_entropy_uniform_is_log_t_and_one_hot_is_zero():
  t = 6
  a = np.zeros((2, 2, t, t))
  a[:, 0] = 1.0 / t
  a[:, 1, :, 0] = 1.0
  row, = attention.entropy_rows([a])
  assert row['entropy_heads'] == pytest.approx([np.log(t), 0.0])
  assert row['entropy_uniform'] == pytest.approx(np.log(t))


def test_rollout_matches_a_hand_computation_on_two_layers():
  # Layer 1 (one head), rows cls, reg, p1, p2:
  a1 = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, .5, 0, .5]], float)
  # Layer 2, two heads: cls attends p2 in one, the register in the other; others self.
  a2 = np.stack([np.eye(4), np.eye(4)])
  a2[0, 0] = [0, 0, 0, 1]
  a2[1, 0] = [0, 1, 0, 0]
  # 0.5 A + 0.5 I: layer 1's cls row (.5, 0, .5, 0), reg (0, 1, 0, 0), p2 (0, .25, 0, .75);
  # layer 2's cls row (.5, .25, 0, .25). Cls's rollout row:
  # .5 (.5, 0, .5, 0) + .25 (0, 1, 0, 0) + .25 (0, .25, 0, .75) = (.25, .3125, .25, .1875)
  r = attention.rollout([a1[None, None], a2[None]])
  np.testing.assert_allclose(r[0, 0], [.25, .3125, .25, .1875], atol=1e-12)
  shares, maps = attention.rollout_summary([a1[None, None], a2[None]], LAY)
  assert shares['cls'] == pytest.approx(.25) and shares['register'] == pytest.approx(.3125)
  assert shares['patch'] == pytest.approx(.4375)
  np.testing.assert_allclose(maps[0], [.25 / .4375, .1875 / .4375], atol=1e-12)
  assert shares['map_max_over_uniform'] == pytest.approx(2 * .25 / .4375)


def test_leading_direction_of_a_rank_one_linear_map():
  rng = np.random.default_rng(2)
  u, v = rng.normal(size=8), rng.normal(size=8)
  u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
  got, s1, s2 = defects.leading_direction(np.stack([3.0 * np.outer(u, v)] * 4))
  assert abs(got @ u) == pytest.approx(1.0) and s1 == pytest.approx(3.0)
  assert s2 == pytest.approx(0.0, abs=1e-12)
  h = np.stack([[5 * u, rng.normal(size=8)]])             # (1, 2, 8)
  al = defects.alignment(u, h, np.array([[True, False]]))
  assert al['cos_high_norm'] == pytest.approx(1.0)
  assert al['cos_normal'] == pytest.approx(abs(h[0, 1] @ u) / np.linalg.norm(h[0, 1]))


def _tiny(**kw):
  return vit.ViT(num_classes=3, image_size=8, patch_size=4, width=16, depth=2, num_heads=2,
                 num_registers=1, layerscale_init=0.5, **kw)


@pytest.fixture(scope='module')
def gated_params():
  """One initialisation (a compile) for every gate: 'none' drops the gate kernels."""
  return models.init_params(_tiny(gate='g1'), jax.random.key(0))


def _params_for(gated, gate):
  p = jax.tree.map(lambda a: a, gated)
  if gate == 'none':
    for b in ('block_0', 'block_1'):
      p[b]['attn'] = {k: v for k, v in p[b]['attn'].items() if k != 'gate'}
  return p


@pytest.mark.parametrize('gate', ['none', 'g1', 'g2'])
def test_block_update_is_the_models_own_block(gated_params, gate):
  """The linearisation's function is the block itself at the captured point."""
  m = _tiny(gate=gate)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  p = _params_for(gated_params, gate)
  p['block_1']['attn']['qkv']['kernel'] = p['block_1']['attn']['qkv']['kernel'] * 30
  _, out = jax.jit(lambda p, x: m.apply({'params': p}, x, capture=True))(p, x)
  assert float(np.asarray(out['attn'][1]).max()) > 0.6      # far from uniform (1/6)

  @jax.jit
  def update(bp, x, a):
    full, f = defects.block_update(bp, x, a, 2, gate, 1e-6)
    return full, f(1, 4, x[1, 4])

  full, one = update(p['block_1'], out['blocks'][0], out['attn'][1])
  np.testing.assert_allclose(full, out['blocks'][1] - out['blocks'][0], atol=1e-5)
  np.testing.assert_allclose(one, full[1, 4], atol=1e-6)


def test_a_block_that_writes_along_one_direction_has_it_as_its_defect(gated_params):
  """proj = c u^T (rank 1) and fc2 = 0: every token's update lies along u."""
  m = _tiny()
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  p = _params_for(gated_params, 'none')
  rng = np.random.default_rng(4)
  u = rng.normal(size=16)
  u /= np.linalg.norm(u)
  p['block_0']['attn']['proj']['kernel'] = jnp.asarray(np.outer(rng.normal(size=16), u) * 3)
  p['block_0']['mlp']['fc2']['kernel'] = jnp.zeros_like(p['block_0']['mlp']['fc2']['kernel'])
  _, out = jax.jit(lambda p, x: m.apply({'params': p}, x, capture=True))(p, x)
  got, s1, s2 = defects.mean_jacobian_direction(p['block_0'], out['embed'], out['attn'][0], 2,
                                                'none', 1e-6, max_tokens=12)
  assert abs(got @ u) == pytest.approx(1.0, abs=1e-5)
  assert s1 > 1e-3 and s2 < 1e-5 * s1


def _planted_model(neuron=7, token=5):
  """A ViT whose block-1 MLP neuron `neuron` fires only on patch `token` and writes
  20 x its activation into channel 1, making that token high-norm; nothing else moves.

  Patch embedding 0: tokens are their position embeddings (normal, channels 0 and 1 zero,
  except channel 0 = 3 at `token`). Attention projections and block 2's fc2 are 0. After
  norm2, channel 0 of `token` is about 3 / 1.1 = 2.6, of the others within +-0.5: fc1 of
  `neuron` reads 6 x channel 0 - 8, so GELU gives ~7.6 there and ~0 elsewhere. The final
  LayerNorm scales channel 1 by 10, so the token's output norm is ~10 sqrt(32) against
  ~sqrt(32).
  """
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=2, width=32, num_heads=2, layerscale_init=0.0, drop_path_rate=0.0)
  model = models.build_model(c.model, c.dataset.num_classes, 'float32')
  p = models.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(5)
  pos = rng.normal(size=(1, 16, 32))
  pos[..., :2] = 0.0
  pos[0, token, 0] = 3.0
  p['pos_embedding'] = jnp.asarray(pos, jnp.float32)
  cls = np.asarray(p['cls']).copy()
  cls[..., :2] = 0.0
  p['cls'] = jnp.asarray(cls)
  p['patch_embed'] = jax.tree.map(jnp.zeros_like, p['patch_embed'])
  for b in ('block_0', 'block_1'):
    p[b]['attn']['proj']['kernel'] = jnp.zeros_like(p[b]['attn']['proj']['kernel'])
  p['block_1']['mlp']['fc2']['kernel'] = jnp.zeros_like(p['block_1']['mlp']['fc2']['kernel'])
  fc1 = np.asarray(p['block_0']['mlp']['fc1']['kernel']).copy()
  fc1[:, neuron] = 0.0
  fc1[0, neuron] = 6.0
  p['block_0']['mlp']['fc1']['kernel'] = jnp.asarray(fc1)
  p['block_0']['mlp']['fc1']['bias'] = p['block_0']['mlp']['fc1']['bias'].at[neuron].set(-8.0)
  fc2 = np.zeros(p['block_0']['mlp']['fc2']['kernel'].shape, np.float32)
  fc2[neuron, 1] = 20.0
  p['block_0']['mlp']['fc2']['kernel'] = jnp.asarray(fc2)
  p['norm']['scale'] = p['norm']['scale'].at[1].set(10.0)
  return c, p


def test_register_neuron_is_found_and_moving_it_removes_the_high_norm_token():
  neuron, token = 7, 5
  c, p = _planted_model(neuron, token)
  lay = vit.token_layout(c.model)
  images = np.random.default_rng(6).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  run = registers.model_pass(c, p)
  model = models.build_model(c.model, c.dataset.num_classes, 'float32')
  _, out = jax.jit(lambda p, x: model.apply({'params': p}, x, capture=True))(
      p, jnp.asarray(images, jnp.float32) / 255)
  before = run(images, 0, None)
  norms = before['output_norms']
  assert norms[:, token].min() > 5 * np.delete(norms, token, 1).max()
  mask = registers.outlier_token_mask(norms, lay, c.probe)
  assert np.argwhere(mask).tolist() == [[i, lay.patches.start + token] for i in range(4)]
  scores = registers.neuron_scores(out['mlp'], mask)
  assert registers.find_neurons(scores, 1) == [(0, neuron)]
  assert registers.find_neurons(scores, 3, up_to_block=1)[0] == (0, neuron)
  after = run(images, 1, registers.neuron_mask([(0, neuron)], 2, 128))
  for key in ('output_norms', ):
    a = after[key]
    others = np.delete(a, token, 1)
    assert a[:, token].max() < 1.5 * np.median(others)      # at its neighbours' level
  res = np.asarray(after['layer_norms'][-1])
  assert res[:, token].max() < 1.5 * np.median(np.delete(res, token, 1))
  # the added token is a register: it now carries the neuron (channel 1 of its residual)
  _, moved = jax.jit(lambda p, x, m: model.apply(
      {'params': p}, x, capture=True, test_time_registers=1, neuron_mask=m))(
          p, jnp.zeros((1, 16, 16, 3)), registers.neuron_mask([(0, neuron)], 2, 128))
  assert vit.token_layout(c.model, 1).kind(1) == 'register'
  assert float(np.asarray(moved['blocks'][0])[0, 1, 1]) > 100
  cmp = registers.compare(before, after, labels=np.zeros(4, int))
  assert cmp['output_norms_before']['max_over_median'] > 5
  assert cmp['output_norms_after']['max_over_median'] < 1.5
  assert set(cmp) >= {'top1_unchanged', 'top1_before', 'top1_after'}


def test_attention_maps_share_one_colour_scale_with_the_uniform_level():
  rng = np.random.default_rng(7)
  t = 17
  a = np.full((2, 3, t, t), 1.0 / t)
  a[0, 1, 0, 5] += 0.2
  images = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  fig = plots.cls_attention(images, a, slice(1, None))
  clims = {im.get_clim() for ax in fig.axes for im in ax.get_images()
           if im.get_array().ndim == 2}
  assert len(clims) == 1                                  # one scale, not per map
  assert clims.pop() == pytest.approx((0.0, 1.0 / t + 0.2))
  bars = [ax for ax in fig.axes if ax.get_label() == '<colorbar>']
  assert len(bars) == 1
  assert f'uniform 1/{t}' in bars[0].get_ylabel()               # the red line is named
  assert [line.get_ydata()[0] for line in bars[0].get_lines()] == [pytest.approx(1.0 / t)]
  # near-uniform maps alone: the scale still starts at 0 and reaches past 1/T
  fig = plots.cls_attention(images, np.full((2, 3, t, t), 1.0 / t), slice(1, None))
  lo, hi = next(im.get_clim() for ax in fig.axes for im in ax.get_images()
                if im.get_array().ndim == 2)
  assert lo == 0.0 and hi >= 1.0 / t


def test_sinks_plot_has_one_quantity_per_labelled_axis():
  attn_rows = [{'sink_share': .5, 'cls_share': .2, 'register_share': .1, 'row_peak': .6}] * 2
  act_rows = [{'act_max_abs': 10.0, 'act_max_over_median': 30.0}] * 2
  fig = plots.sinks(attn_rows, act_rows)
  labels = [ax.get_ylabel() for ax in fig.axes]
  assert len(fig.axes) == 3 and all(labels) and len(set(labels)) == 3
  drawn = lambda fig: [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert 'registers' in drawn(fig)
  no_registers = [dict(r, register_share=None) for r in attn_rows]
  assert 'registers' not in drawn(plots.sinks(no_registers, act_rows))


def test_the_toolkit_runs_in_analyze_on_the_planted_model():
  """The table's entries on the planted model: the register neuron is found and moved,
  and block 1's update (fc2 writes only channel 1) has channel 1 as its singular
  defect, with which the high-norm token aligns and the others do not."""
  from vit_jax.analysis import analyses
  from vit_jax.analysis import run
  neuron, token = 7, 5
  c, p = _planted_model(neuron, token)
  c.analysis.update(num_images=2, register_neurons=1)
  images = np.random.default_rng(8).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  out = run.capture(c, p, images)
  cap = analyses.Capture(
      config=c, images=images, layout=vit.token_layout(c.model), attn=list(out['attn']),
      blocks=out['blocks'], gates=out['gates'], layer_norms=out['norms']['layers'],
      output_norms=out['norms']['output'], per_epoch={}, per_epoch_layers={},
      embed=out['embed'], mlp=out['mlp'], params=p, apply=registers.model_pass(c, p))
  summary, figures = analyses.run_all(cap)
  t = summary['test_time_registers']
  assert t['neurons'][0]['block'] == 1 and t['neurons'][0]['neuron'] == neuron
  assert t['output_norms_before']['max_over_median'] > 5
  assert t['output_norms_after']['max_over_median'] < 1.5
  first = summary['layers'][0]
  assert first['defect_cos_high_norm'] > 0.9 > 0.5 > first['defect_cos_normal']
  assert first['defect_sigma1_over_sigma2'] > 1e3
  assert {'test_time_registers.png', 'singular_defects.png', 'outliers.png'} <= {
      name for name, _ in figures}
  summary.update(workdir='w', checkpoint_epoch=1, epochs_trained=1, num_params=1,
                 val_acc1_at_checkpoint=None, best_val_acc1=0.0, best_epoch=1,
                 probe_images=4, outlier_rule={}, plots=[])
  text = run.report(summary)
  assert f'register neurons (block:neuron) 1:{neuron}' in text and 'Sink rate' in text
  assert 'flat_outliers' in first and 'High-norm patch tokens on flat patches' in text


def test_flat_patch_outliers_by_hand():
  """Two 4x4 images on a 2x2 grid of 2x2 patches: patch 0 textured, 1-3 flat (constant),
  so the flat share of all patches is 3/4. A high-norm token (relative rule: above 2x the
  median) on flat patch 2 gives 1.0; on the textured patch, 0.0; none at all, None."""
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[:, :2, :2] = [[[0], [255]], [[255], [0]]]           # a checkerboard in patch 0
  images[:, :2, 2:] = 40                                        # flat, but not black
  probe = config_lib.base().probe
  norms = np.ones((3, 2, 4))
  norms[0, 1, 2] = 10.0                                         # block 1: on a flat patch
  norms[1, 0, 0] = 10.0                                         # block 2: on the textured one
  rows = stats.flat_patch_outliers(norms, images, probe)
  assert [r['base'] for r in rows] == [0.75] * 3
  assert [r['outliers'] for r in rows] == [1.0, 0.0, None]
  assert stats.flat_patch_outliers(norms, images[:, :3, :3], probe) == []   # off the grid
