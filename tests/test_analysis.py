"""The analysis: a planted high-norm token is found; attention, gates, plots, reports, scoreboard."""
import contextlib
import json
import os
import re
import shutil
import subprocess

import chex
import jax
import jax.numpy as jnp
import matplotlib.image
import matplotlib.colors
import numpy as np
import pytest

from conftest import run_main
from vit_jax import config_lib
from vit_jax import models
from vit_jax.analysis import compare
from vit_jax.analysis import plots
from vit_jax.analysis import run as analysis
from vit_jax.analysis import scoreboard
from vit_jax.analysis import stats
from vit_jax.models import vit
from vit_jax.train import checkpoint
from vit_jax.train import loop
from vit_jax.train import metrics_io
from vit_jax.train import steps

# A small G1-gated model with registers: every plot of the analysis applies to it.
SMALL = dict(depth=2, width=32, num_heads=2, gate='g1', num_registers=2)
CLI_CONFIG = ['--config', 'configs/sdpa_gated.py:quick', '--config.model.depth=2',
              '--config.model.width=32', '--config.model.num_heads=2',
              '--config.model.num_registers=2']
PLOTS = {'plots/l2_norms_per_epoch.png', 'plots/l2_norms_per_layer.png',
         'plots/outliers.png', 'plots/sink_rate_entropy.png', 'plots/attention_rollout.png',
         'plots/singular_defects.png',
         'plots/attention_cls.png', 'plots/attention_registers.png', 'plots/gates.png',
         'plots/sinks.png'}


def small_config():
  c = config_lib.load('vanilla', 'quick')
  c.model.update(SMALL)
  c.total_epochs = 2
  c.trainer = 'analyze'
  return c


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """Two epochs of training of the small model (checkpoints, metrics, per-epoch norms)."""
  path = str(tmp_path_factory.mktemp('trained'))
  loop.train_and_evaluate(small_config(), path)
  return path


def planted_params(model, token: int, scale: float = 10.0):
  """Random weights, then one patch token made high-norm by hand.

  Channel 0 is emptied for every token (patch embedding and position
  embeddings) except patch `token`, whose position embedding gets 1000 there;
  the final LayerNorm scales channel 0 by `scale`. With LayerScale 1e-4 the
  blocks barely move the tokens, so after the final norm that token's norm is
  about scale * sqrt(width), the others' about sqrt(width).
  """
  p = models.init_params(model, jax.random.key(0))
  p['patch_embed']['kernel'] = p['patch_embed']['kernel'].at[..., 0].set(0.0)
  p['patch_embed']['bias'] = p['patch_embed']['bias'].at[0].set(0.0)
  pos = p['pos_embedding'].at[0, :, 0].set(0.0)
  p['pos_embedding'] = pos.at[0, token, 0].set(1000.0)
  p['cls'] = p['cls'].at[..., 0].set(0.0)
  p['registers'] = p['registers'].at[..., 0].set(0.0)
  p['norm']['scale'] = p['norm']['scale'].at[0].set(scale)
  return p


def test_planted_high_norm_token_is_the_only_outlier():
  c = small_config()
  model = models.build_model(c.model, c.dataset.num_classes)
  token = 5
  params = planted_params(model, token)
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.float32)
  norms = steps.probe_norms(params, jnp.asarray(images), model=model, config=c)
  chex.assert_shape(norms['output'], (8, 16))
  chex.assert_shape(norms['layers'], (2, 8, 16))
  out = np.asarray(norms['output'])
  others = np.delete(out, token, axis=1)
  assert out[:, token].min() > 5 * others.max()          # about 10 sqrt(32) vs sqrt(32)
  expected = [(i, token) for i in range(8)]
  assert stats.outlier_tokens(out, c.probe) == expected
  assert stats.norm_stats(out, c.probe)['l2_outlier_ratio'] == pytest.approx(1 / 16)
  for layer in np.asarray(norms['layers']):              # the residual stream: norm ~1000
    assert stats.outlier_tokens(layer, c.probe) == expected
  c.probe.update(outlier_rule='absolute', outlier_threshold=150.0)
  assert stats.outlier_tokens(out, c.probe) == []         # Darcet's 150 misses it at this width
  c.probe.outlier_threshold = 30.0
  assert stats.outlier_tokens(out, c.probe) == expected


def test_attention_stats_by_hand():
  # one image, one head, tokens [cls, register, patch, patch]
  a = np.array([[[[0.7, 0.1, 0.1, 0.1],
                  [0.5, 0.5, 0.0, 0.0],
                  [0.4, 0.2, 0.2, 0.2],
                  [0.9, 0.0, 0.0, 0.1]]]])
  # cls receives 0.625 of 4 tokens: a sink above 2 x uniform (0.5), not above 5 x (1.25)
  assert stats.attention_stats([a], vit.TokenLayout(1, 1, 2))[0]['sink_kind'] == 'none'
  row, = stats.attention_stats([a], vit.TokenLayout(1, 1, 2), epsilon=0.3, factor=2.0)
  assert row['cls_share'] == pytest.approx((0.7 + 0.5 + 0.4 + 0.9) / 4)
  assert row['sink_share'] == pytest.approx(row['cls_share'])   # cls receives the most
  assert row['sink_kind'] == 'cls' and row['sink_index'] == 0
  assert row['register_share'] == pytest.approx((0.1 + 0.5 + 0.2 + 0.0) / 4)
  # without registers: no register mass at all (None), not a share of 0
  assert stats.attention_stats([a], vit.TokenLayout(1, 0, 3))[0]['register_share'] is None
  assert row['row_peak'] == pytest.approx((0.7 + 0.5 + 0.4 + 0.9) / 4)
  assert row['row_sum_max_error'] == pytest.approx(0.0, abs=1e-12)


def test_gate_stats_by_hand():
  g = np.zeros((1, 2, 2, 2))               # (B, T, H, D)
  g[:, :, 0] = [[0.05, 0.5], [0.05, 0.5]]  # head 0: half its values below 0.1
  g[:, :, 1] = 0.9
  row, = stats.gate_stats([g], sparse_below=0.1)
  assert row['head_mean'] == pytest.approx([0.275, 0.9])
  assert row['head_sparsity'] == pytest.approx([0.5, 0.0])
  assert row['mean'] == pytest.approx((0.275 + 0.9) / 2)
  assert row['sparsity'] == pytest.approx(0.25)


def test_kind_norms_by_hand():
  # two images, tokens [cls, register, register, patch, patch, patch], width 2
  x = np.zeros((2, 6, 2))
  x[:, 0] = [3, 4]                              # cls: norm 5 in both images
  x[0, 1:3] = [[0, 1], [0, 3]]                  # registers: 1, 3 | 2, 6
  x[1, 1:3] = [[0, 2], [0, 6]]
  x[0, 3:] = [[1, 0], [2, 0], [10, 0]]          # patches: median 2, max 10 | 1, 4
  x[1, 3:] = [[1, 0], [1, 0], [4, 0]]
  row, = stats.kind_norms([x], vit.TokenLayout(1, 2, 3))
  assert row == pytest.approx({'cls': 5.0, 'register_mean': 3.0, 'register_max': 4.5,
                               'patch_median': 1.5, 'patch_max': 7.0})
  row, = stats.kind_norms([x[:, [0, 3, 4, 5]]], vit.TokenLayout(1, 0, 3))
  assert row['register_mean'] is None and row['register_max'] is None


def test_captured_attention_rows_sum_to_one_and_gates_lie_in_unit_interval(workdir):
  c = small_config()
  params = analysis.load_params(c, checkpoint.epoch_dir(workdir, 2))
  images = analysis.probe_images(c)
  out = analysis.capture(c, params, images)
  t = 1 + 2 + 16
  assert len(out['attn']) == 2 and len(out['gates']) == 2
  for a, g in zip(out['attn'], out['gates']):
    chex.assert_shape(a, (32, 2, t, t))
    chex.assert_shape(g, (32, t, 2, 16))
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert (a >= 0).all() and (g >= 0).all() and (g <= 1).all()
  for row in stats.gate_stats(out['gates'], 0.1):
    for key in ('mean', 'sparsity', 'min', 'max'):
      assert 0.0 <= row[key] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in row['head_mean'] + row['head_sparsity'])


def test_analyze_cli_writes_plots_and_report(workdir):
  r = run_main(CLI_CONFIG + ['--workdir', workdir, '--config.trainer=analyze'])
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'analysed epoch 2' in r.stdout
  first = json.load(open(os.path.join(workdir, 'analysis.json')))
  assert set(first['plots']) == PLOTS
  for rel in PLOTS:
    with open(os.path.join(workdir, rel), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    height, width, _ = matplotlib.image.imread(os.path.join(workdir, rel)).shape
    assert height > 100 and width > 100
  assert [e['epoch'] for e in first['epochs']] == [1, 2]
  # The epoch statistics, recomputed here with numpy from the saved norms and the rule
  # (relative: above 2 x the median).
  norms = np.load(os.path.join(workdir, 'l2_norms', 'epoch2.npy'))
  last = first['epochs'][-1]
  assert last['l2_norm_mean'] == pytest.approx(norms.mean(), rel=1e-6)
  assert last['l2_norm_max'] == pytest.approx(norms.max(), rel=1e-6)
  assert last['l2_outlier_ratio'] == pytest.approx((norms > 2 * np.median(norms)).mean())
  assert len(first['layers']) == 2 and first['gates'] is not None
  report = open(os.path.join(workdir, 'analysis.md')).read()
  assert '| 2 |' in report and 'gate mean' in report


def test_plots_have_their_panels():
  rng = np.random.default_rng(0)
  lay = vit.TokenLayout(1, 2, 16)
  attn = [rng.dirichlet(np.ones(19), size=(3, 2, 19)) for _ in range(2)]
  images = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  fig = plots.cls_attention(images, attn[-1], lay.patches)
  assert len(fig.axes) == 3 * (1 + 2) + 1                 # images x (input + heads), colour bar
  assert len(plots.register_attention(images, attn, lay).axes) == 1 + 2 + 1
  assert len(plots.norm_histograms({1: rng.random((3, 16)), 5: rng.random((3, 16))},
                                   {1: 1.0, 5: 1.0}).axes) == 2
  gates = stats.gate_stats([rng.random((3, 19, 2, 4))] * 2, 0.1)
  assert len(plots.gates(gates).axes) == 4                # two heat maps + colour bars
  assert plots.pick_epochs(list(range(1, 41)), 6) == [1, 9, 17, 24, 32, 40]


@pytest.mark.parametrize('setup,args,fragments', [
    ('missing', [], ['does not exist']),
    ('trained', ['--config.analysis.checkpoint=7'], ["'7'", 'saved epochs: ', "'latest', 'best'"]),
])
def test_bad_input_is_one_line(workdir, tmp_path, setup, args, fragments):
  target = workdir if setup == 'trained' else str(tmp_path / 'nope')
  before = sorted(os.listdir(target)) if os.path.isdir(target) else None
  r = run_main(CLI_CONFIG + ['--workdir', target, '--config.trainer=analyze'] + args)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  for fragment in fragments:
    assert fragment in lines[0]
  assert (sorted(os.listdir(target)) if os.path.isdir(target) else None) == before


@pytest.mark.parametrize('setup,fragment', [
    ('empty', 'no metrics.csv rows'), ('no_checkpoint', 'has no checkpoint'),
    ('other_width', 'another model'), ('read_only', 'is not writable'), ('best', None),
    ('latest', None)])
def test_check_names_what_was_expected(workdir, tmp_path, setup, fragment):
  """analysis.check is what main runs before anything; its messages are single lines. A
  workdir that takes no new file is refused there, not after the analysis has run."""
  c = small_config()
  target = workdir if setup in ('other_width', 'best', 'latest') else str(tmp_path)
  if setup == 'no_checkpoint':
    shutil.copy(os.path.join(workdir, 'metrics.csv'), tmp_path)
  if setup == 'read_only':
    target = str(tmp_path / 'ro')
    shutil.copytree(workdir, target)
    with read_only(target):
      with pytest.raises(ValueError) as e:
        analysis.check(c, target)
    assert fragment in str(e.value) and '\n' not in str(e.value)
    return
  if setup == 'other_width':
    c.model.width = 48
  if fragment is None:
    c.analysis.checkpoint = setup
    rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
    best = max(rows, key=lambda r: (float(r['val_acc1']), int(r['epoch'])))
    assert analysis.check(c, target) == (int(best['epoch']) if setup == 'best' else 2)
    return
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    analysis.check(c, target)
  assert fragment in str(e.value) and '\n' not in str(e.value)
  assert not os.path.exists(os.path.join(target, 'plots')) or target == workdir


@contextlib.contextmanager
def read_only(path: str):
  """A folder no one can create files in: mode 555, and immutable for root, who ignores modes."""
  os.chmod(path, 0o555)
  if os.geteuid() == 0 and subprocess.run(['chattr', '+i', path], capture_output=True).returncode:
    os.chmod(path, 0o755)
    pytest.skip('running as root without chattr: cannot make a folder read-only')
  try:
    yield path
  finally:
    if os.geteuid() == 0:
      subprocess.run(['chattr', '-i', path])
    os.chmod(path, 0o755)


def test_check_refuses_a_resnet_config(tmp_path):
  c = config_lib.load('teacher_resnet', 'quick')
  c.trainer = 'analyze'
  with pytest.raises(ValueError, match="model.arch='resnet' has none"):
    analysis.check(c, str(tmp_path))


def _fake_workdir(root, name, accs, outliers, speed, analysis_json=None):
  path = os.path.join(root, name)
  os.makedirs(path)
  rows = [{k: 0 for k in metrics_io.COLUMNS} | {'epoch': i + 1, 'val_acc1': a,
                                                 'l2_outlier_ratio': o, 'images_per_s': speed}
          for i, (a, o) in enumerate(zip(accs, outliers))]
  metrics_io.write(os.path.join(path, 'metrics.csv'), rows)
  if analysis_json:
    with open(os.path.join(path, 'analysis.json'), 'w') as f:
      json.dump(analysis_json, f)
  return path


def test_scoreboard_reads_metrics_and_analysis(tmp_path):
  a = _fake_workdir(tmp_path, 'base', [10.0, 30.0, 20.0], [0.0, 0.1, 0.2], 100.0)
  b = _fake_workdir(tmp_path, 'gated', [40.0, 35.0], [0.0, 0.0], 50.0,
                    {'num_params': 1234, 'layers': [{'sink_share': 0.5}, {'sink_share': 0.25}],
                     'gates': {'mean': 0.116, 'sparsity': 0.6}})
  ra, rb = scoreboard.row(a), scoreboard.row(b)
  assert (ra['best_val_acc1'], ra['best_epoch'], ra['final_outlier_ratio']) == (30.0, 2, 0.2)
  assert (rb['params'], rb['gate_mean'], rb['gate_sparsity'], rb['last_block_sink_share']) == (
      1234, 0.116, 0.6, 0.25)
  table = scoreboard.markdown([ra, rb])
  assert '| gated | 40.00% | 1 | 2 | 1,234 | 50 | 0.0000 | 0.116 | 0.600 | 0.250 |' in table
  assert '| gated | 40.00% | 1,234 | +10.00 points |' in table and '| 0.50 |' in table


def test_scoreboard_cli_writes_markdown_and_json(tmp_path, capsys):
  a = _fake_workdir(tmp_path, 'base', [10.0, 30.0], [0.0, 0.1], 100.0)
  out = str(tmp_path / 'board' / 'scores.md')
  scoreboard.main(['--out', out, a])
  assert '| base | 30.00% | 2 | 2 |' in open(out).read()
  assert json.load(open(str(tmp_path / 'board' / 'scores.json')))['runs'][0]['best_epoch'] == 2
  assert '| base | 30.00% |' in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    scoreboard.main([a, str(tmp_path / 'nope')])
  assert e.value.code == 2                        # as every command of the CLI
  assert re.fullmatch(r"error: workdir '.*nope' does not exist\n", capsys.readouterr().err)


def test_compare_per_layer_over_seeds(tmp_path):
  """Two variants x two seeds: each cell is the mean and ddof=1 std of the seeds' values
  (numbers chosen by hand); a quantity only the gated variant has is left out of the
  other's column and panel; a run without analysis.json is named and left out."""
  def run(variant, seed, sinks, gates=None, registers=None):
    # analysis.json written before this change has register_share 0 without registers
    # (compare still leaves it out) and the register norms as None where there are none.
    layers = [{'sink_rate_any': s, 'cls_share': 0.1 * seed, 'register_share': 0.0,
               'norm_register_max': None} for s in sinks]
    for row, r in zip(layers, registers or []):
      row.update(register_share=r, norm_register_max=10 * r)
    if gates:
      for row, g in zip(layers, gates):
        row['gate_mean'] = g
    path = _fake_workdir(tmp_path / variant, f'seed={seed}', [50.0], [0.0], 10.0,
                         {'num_params': 1, 'layers': layers, 'gates': None})
    with open(os.path.join(path, 'sweep.json'), 'w') as f:
      json.dump({'config': f'configs/{variant}.py:fmnist', 'seed': seed, 'grid': {}}, f)
  run('vanilla', 0, [0.0, 0.5])
  run('vanilla', 1, [1.0, 0.25])
  run('g1', 0, [0.0, 0.0], gates=[0.1, 0.2])
  run('g1', 1, [0.0, 0.0], gates=[0.3, 0.6])
  run('reg', 0, [0.0, 0.0], registers=[0.2, 0.4])
  _fake_workdir(tmp_path / 'g1', 'seed=2', [50.0], [0.0], 10.0)     # not analysed
  out = tmp_path / 'cmp' / 'layers.md'
  compare.main(['--out', str(out), str(tmp_path / 'vanilla'), str(tmp_path / 'g1'),
                str(tmp_path / 'reg')])
  result = json.load(open(tmp_path / 'cmp' / 'layers.json'))
  van, g1 = (result['variants'][f'configs/{v}.py:fmnist'] for v in ('vanilla', 'g1'))
  assert van['sink_rate_any']['mean'] == pytest.approx([0.5, 0.375])
  assert van['sink_rate_any']['std'] == pytest.approx([2 ** -0.5, 0.125 * 2 ** 0.5])
  assert g1['gate_mean']['mean'] == pytest.approx([0.2, 0.4])
  assert 'gate_mean' not in van and van['n'] == 2 and g1['n'] == 2
  reg = result['variants']['configs/reg.py:fmnist']
  assert reg['register_share']['mean'] == pytest.approx([0.2, 0.4])
  assert 'register_share' not in van and 'register_share' not in g1   # no registers: no 0s
  assert result['not_analysed'] == ['g1/seed=2']
  text = out.read_text()
  assert '| block | configs/g1.py:fmnist |' in text            # the gate table: g1 only
  assert '| 2 | 0.375 ± 0.177 | 0.000 ± 0.000 |' in text
  assert os.path.getsize(tmp_path / 'cmp' / 'layers.png') > 1000
  fig = compare.figure(result, ['gate_mean', 'sink_rate_any', 'norm_register_max'])
  assert len(fig.axes) == 3
  legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
  assert legends[2] == ['configs/reg.py:fmnist']      # register norms: only the register run
  # a variant keeps its colour from panel to panel (g1 is first in the gate panel only)
  colours = {}
  for ax in fig.axes:
    for handle, text in zip(*ax.get_legend_handles_labels()):
      colours.setdefault(text, set()).add(matplotlib.colors.to_hex(handle[0].get_color()))
  assert all(len(c) == 1 for c in colours.values()) and len(colours) == 3
  assert [len(ax.get_lines()) for ax in fig.axes][0] < [len(ax.get_lines())
                                                          for ax in fig.axes][1]
