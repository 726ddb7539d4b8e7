"""Fine-tuning from and analysing a timm checkpoint saved in the hub's layout (timm's own
save_for_hf): a fresh run starts from hub_import.load's parameters at the run's resolution (the
head re-initialised with the model's own init when the classes differ), a resume does
not re-import, and trainer=analyze on a folder of images gives timm's token norms (and,
on the digits split, timm's top-1) for the same preprocessed images."""
import json
import math
import os

import flax
import jax
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models._hub import save_for_hf
from torchvision import transforms

from conftest import run_main
from vit_jax import config_lib
from vit_jax import models
from vit_jax import preflight
from vit_jax.analysis import run as analysis
from vit_jax.data import pipeline
from vit_jax.models import hub_import
from vit_jax.train import checkpoint
from vit_jax.train import loop
from vit_jax.train import preemption
import tiny_run  # noqa: F401  (compiled programs cached on disk between the runs of a session)
from refutil import randomize_

ATOL = 1e-4   # norms of about 5 to 30, float32 through two blocks
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# A checkpoint's own preprocessing, unlike both the quick config's (0.5, 0.5, crop 1.0) and
# ImageNet's: what timm's resolve_data_config reads from its pretrained_cfg.
OWN_PREPROCESSING = dict(mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), crop_pct=0.8)


def _timm(num_classes, img_size=32, seed=0, **kwargs):
  """A DeiT-III (LayerScale, patch-only position embeddings), weights far from their init."""
  model = timm.create_model('deit3_small_patch16_224', pretrained=False, img_size=img_size,
                            patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=num_classes, **kwargs).eval()
  randomize_(model, seed=seed)
  return model


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """{name: (folder, timm model)}: DeiT-III with 10 and 5 classes at 32 px, 10 classes at
  16 px, and at 32 px with a preprocessing of its own; a headless DINOv2 with 4 registers
  (patch 14) at 56 px."""
  models_ = {name: _timm(classes, size, seed=classes + size)
             for name, classes, size in (('c10', 10, 32), ('c5', 5, 32), ('c10_16', 10, 16))}
  models_['own_cfg'] = _timm(10, 32, seed=5, pretrained_cfg_overlay=OWN_PREPROCESSING)
  models_['dinov2_reg'] = timm.create_model('vit_small_patch14_reg4_dinov2', pretrained=False,
                                            img_size=56, embed_dim=32, depth=2,
                                            num_heads=2).eval()
  randomize_(models_['dinov2_reg'], seed=3)
  out = {}
  for name, model in models_.items():
    folder = str(tmp_path_factory.mktemp(name))
    save_for_hf(model, folder, safe_serialization=True)
    out[name] = folder, model
  return out


def _config(source, **more):
  c = config_lib.load('vanilla', 'quick')
  c.init.source = source
  c.total_epochs = 1
  c.update_from_flattened_dict(more)
  return c


def _flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def test_fine_tuning_starts_from_the_import_and_a_resume_from_the_workdir(tmp_path,
                                                                          checkpoints):
  """5 classes -> digits' 10 at 16 px: the 8x8 position grid is resampled to 4x4, the head
  re-initialised; (tests/test_pretrained.py: a head of the data set's classes is kept)."""
  folder, _ = checkpoints['c5']
  c = _config(folder, **{'optim.warmup_epochs': 0.0})
  preflight.check(c, str(tmp_path))
  imported = _flat(hub_import.load(folder, 16).params)
  watch = preemption.PreemptionWatch()
  run = loop.Run(c, str(tmp_path))
  try:
    got = _flat(run.state.params)          # before the first step
    own = _flat(models.init_params(run.compiled.model, run.compiled.init_rng))
    assert got['pos_embedding'].shape == imported['pos_embedding'].shape == (1, 16, 32)
    assert got['head/out/kernel'].shape == (32, 10) != imported['head/out/kernel'].shape
    for key, value in got.items():
      want = own[key] if key.startswith('head/') else imported[key]
      np.testing.assert_array_equal(value, want, err_msg=key)
    row = run.train(watch, None)
  finally:
    watch.close()
    run.close()
  assert np.isfinite(row['train_loss']) and row['epoch'] == 1
  saved = json.loads((tmp_path / 'config.json').read_text())['model']
  assert (saved['width'], saved['depth'], saved['num_registers']) == (32, 2, 0)
  trained = _flat(analysis.load_params(c, checkpoint.epoch_dir(str(tmp_path), 1)))
  assert not np.allclose(trained['block_0/attn/qkv/kernel'], imported['block_0/attn/qkv/kernel'])
  c.total_epochs = 2
  run = loop.Run(c, str(tmp_path))
  try:
    assert run.restore() == run.per_epoch       # the update that ended epoch 1
    for key, value in _flat(run.state.params).items():
      np.testing.assert_array_equal(value, trained[key], err_msg=key)
  finally:
    run.close()


def _timm_norms(model, x):
  """Output patch-token norms (after the final norm) and each block's, by timm."""
  layers = []
  hooks = [b.register_forward_hook(lambda m, i, o: layers.append(o)) for b in model.blocks]
  with torch.no_grad():
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
  for h in hooks:
    h.remove()
  p = model.num_prefix_tokens
  norm = lambda t: t[:, p:].norm(dim=-1).numpy().astype(np.float64)
  return norm(feats), [norm(t) for t in layers], logits.numpy()


def _stats(norms):
  return norms.mean(), norms.std(), norms.max()


def _images(folder):
  """PNGs and a JPEG of several sizes and modes, in nested folders, and a file to pass over."""
  rng = np.random.default_rng(0)
  specs = [('a.png', (40, 40, 3), None), ('sub/b.png', (40, 50, 3), None),
           ('sub/deeper/c.png', (48, 36, 4), 'RGBA'), ('d.jpg', (64, 64), 'L')]
  for name, shape, mode in specs:
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
  with open(os.path.join(folder, 'notes.txt'), 'w') as f:
    f.write('not an image')
  return sorted(os.path.join(folder, n) for n, _, _ in specs)


@pytest.mark.parametrize('name,family,size,ratio', [('c10', 'deit3', 32, 0.8),
                                                     ('dinov2_reg', 'dinov2_reg', 56, 1.0)])
def test_analyze_a_folder_of_images_gives_timms_norms(tmp_path, checkpoints, name, family, size,
                                                      ratio):
  folder, model = checkpoints[name]
  paths = _images(str(tmp_path / 'images'))
  out = tmp_path / 'out' / name   # made by the run
  proc = run_main(['--config', 'configs/vanilla.py:quick', '--workdir', str(out),
                   '--config.trainer=analyze', f'--config.init.source={folder}',
                   f'--config.analysis.images={tmp_path / "images"}',
                   f'--config.model.image_size={size}', f'--config.dataset.image_size={size}',
                   f'--config.dataset.mean={MEAN}', f'--config.dataset.std={STD}',
                   f'--config.dataset.eval_crop_ratio={ratio}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / 'analysis.json').read_text())
  assert summary['imported']['family'] == family and summary['probe_images'] == len(paths)
  assert summary['checkpoint_epoch'] is None and summary['epochs'] == []
  assert summary['probe_top1'] is None                       # the user's images have no labels
  assert {'layers', 'output_norms', 'output_outlier_tokens', 'plots'} <= set(summary)
  assert all((out / p).is_file() for p in summary['plots'])
  assert f"imported: {folder}/model.safetensors ({family})" in (out / 'analysis.md').read_text()
  # timm's evaluation transform (e.g. crop_pct 0.8: the short side to 40, the centre 32)
  tf = transforms.Compose([
      transforms.Resize(math.floor(size / ratio), transforms.InterpolationMode.BICUBIC),
      transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
  x = torch.stack([tf(Image.open(p).convert('RGB')) for p in paths])
  norms, layers, _ = _timm_norms(model, x)
  o = summary['output_norms']
  np.testing.assert_allclose([o['l2_norm_mean'], o['l2_norm_std'], o['l2_norm_max']],
                             _stats(norms), atol=ATOL, rtol=0)
  for row, want in zip(summary['layers'], layers, strict=True):
    np.testing.assert_allclose([row['l2_norm_mean'], row['l2_norm_max']],
                               [want.mean(), want.max()], atol=ATOL, rtol=0)


def test_analyze_uses_the_checkpoints_preprocessing_unless_the_command_line_sets_it(
    tmp_path, checkpoints):
  """No dataset flags: the analysed images are preprocessed as timm's resolve_data_config +
  create_transform preprocess them for this checkpoint (its pretrained_cfg mean, std and
  crop_pct, none of them the config's), and the import line says so; a flag set on the
  command line is the config's, and the line says that."""
  folder, model = checkpoints['own_cfg']
  paths = _images(str(tmp_path / 'images'))
  args = ['--config', 'configs/vanilla.py:quick', '--config.trainer=analyze',
          f'--config.init.source={folder}', f'--config.analysis.images={tmp_path / "images"}',
          '--config.model.image_size=32', '--config.dataset.image_size=32']
  proc = run_main(args + ['--workdir', str(tmp_path / 'out')])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ('preprocessing: mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), eval_crop_ratio=0.8 from '
          'the checkpoint\n') in proc.stdout, proc.stdout
  ref = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
  transform = create_transform(**resolve_data_config({}, model=ref))
  norms, _, _ = _timm_norms(model, torch.stack([transform(Image.open(p).convert('RGB'))
                                                for p in paths]))
  o = json.loads((tmp_path / 'out' / 'analysis.json').read_text())['output_norms']
  np.testing.assert_allclose([o['l2_norm_mean'], o['l2_norm_std'], o['l2_norm_max']],
                             _stats(norms), atol=ATOL, rtol=0)
  proc = run_main(args + ['--workdir', str(tmp_path / 'out2'),
                          '--config.dataset.std=(0.5,0.5,0.5)'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ('preprocessing: mean=(0.3, 0.4, 0.5), eval_crop_ratio=0.8 from the checkpoint; '
          'std=(0.5, 0.5, 0.5) from the config (kept)\n') in proc.stdout, proc.stdout


@pytest.mark.parametrize('shape', [(48, 36), (40, 50), (37, 91), (91, 37), (300, 199), (17, 23)])
@pytest.mark.parametrize('size,ratio', [(56, 1.0), (32, 0.875), (16, 0.9)])
def test_the_evaluation_crop_is_torchvisions(shape, size, ratio):
  """pipeline.center_crop (ImageFolder evaluation, the analysed images) against DeiT's and
  timm's Resize(int(size / ratio), bicubic) + CenterCrop(size), pixel for pixel."""
  image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
  tf = transforms.Compose([
      transforms.Resize(int(size / ratio), transforms.InterpolationMode.BICUBIC),
      transforms.CenterCrop(size)])
  want = np.asarray(tf(Image.fromarray(image)))
  np.testing.assert_array_equal(pipeline.center_crop(image, size, ratio), want)


def test_analyze_on_the_split_reports_timms_top1(tmp_path, checkpoints):
  folder, model = checkpoints['c10_16']   # digits: 10 classes at 16 px, the head's
  c = _config(folder, trainer='analyze')
  summary = analysis.analyze(c, str(tmp_path / 'out'))
  images, labels = analysis.probe_batch(c)
  # normalised as the checkpoint's pretrained_cfg says (timm's resolve_data_config), not as
  # the config's digits (0.5, 0.5); the digits come at 16 px, uncropped
  d = resolve_data_config({}, model=model)
  assert (tuple(d['mean']), tuple(d['std'])) == (MEAN, STD)
  x = torch.from_numpy(((images / 255.0 - np.float32(MEAN)) / np.float32(STD)).transpose(
      0, 3, 1, 2).astype(np.float32))
  norms, _, logits = _timm_norms(model, x)
  assert summary['probe_images'] == len(labels) == c.probe.num_images
  assert summary['images'] == 'digits validation split'
  assert summary['probe_top1'] == pytest.approx(100.0 * np.mean(logits.argmax(-1) == labels))
  np.testing.assert_allclose(summary['output_norms']['l2_norm_mean'], norms.mean(), atol=ATOL)
  # attention far from uniform (each row's largest weight), so the comparison could fail
  tokens = 1 + 16   # cls and 4x4 patches
  assert min(r['row_peak'] for r in summary['layers']) > 3.0 / tokens


@pytest.mark.parametrize('config,more,fragments', [
    ('sdpa_gated', {}, ['has no parameter block_0/attn/gate/kernel (32, 32)',
                        "config's model.gate"]),
    ('vanilla', {'model.svd_tap_layers': (1,)}, ['svd_proj_0/kernel', 'model.svd_tap_layers']),
    ('vanilla', {'trainer': 'analyze', 'analysis.images': 'EMPTY'},
     ["analysis.images='", 'holds no images']),
])
def test_refusals_are_one_line_before_any_work(tmp_path, checkpoints, config, more, fragments):
  """What main prints as its one `error:` line (tests/test_pretrained.py runs main itself)."""
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('x')
  c = config_lib.load(config, 'quick')
  c.init.source = checkpoints['c10'][0]
  for key, value in more.items():
    section, leaf = key.split('.') if '.' in key else (None, key)
    node = c[section] if section else c
    node[leaf] = str(tmp_path / 'empty') if value == 'EMPTY' else value
  workdir = tmp_path / 'run'
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    preflight.check(c, str(workdir))
  assert '\n' not in str(e.value)
  for f in fragments:
    assert f in str(e.value), str(e.value)
  assert not workdir.exists()
