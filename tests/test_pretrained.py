"""Starting from a pretrained checkpoint (config.init.source) without torch: the fit check,
the parameters a fresh run starts from, the user's image folder, the one-line refusals.
(tests/reference/test_ref_pretrained.py runs timm's checkpoints through train and analyze.)"""
import os

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import run_main
from vit_jax import config_lib
from vit_jax import models
from vit_jax.data import imagefolder
from vit_jax.models import hub_import
from vit_jax.models import pretrained

ARCH = dict(patch_size=4, width=32, depth=2, num_heads=2, mlp_ratio=4.0, qkv_bias=True,
            layerscale_init=1e-5, num_registers=0, pos_embed='patches', distillation=False,
            head='linear', layer_norm_eps=1e-6)


def _config(**model):
  c = config_lib.load('vanilla', 'quick')
  c.model.update(model)
  return c


def _imported(num_classes=10, image_size=16, **arch):
  """An Imported as hub_import.load gives it, made from the project's own model (no file)."""
  fields = {**ARCH, **arch, 'image_size': image_size}
  model = models.build_model(_config(**fields).model, num_classes)
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                        models.abstract_params(model))
  return hub_import.Imported(model=fields, num_classes=num_classes, params=params, source='ckpt',
                      family='deit3')


def _abstract(config):
  return models.abstract_params(models.build_model(config.model, config.dataset.num_classes))


def test_load_writes_the_architecture_and_keeps_the_rest(monkeypatch):
  imported = _imported(image_size=32)
  monkeypatch.setattr(hub_import, 'load', lambda source, size: imported)
  c = _config(drop_path_rate=0.1)
  c.init.source = 'somewhere-new'
  assert pretrained.load(c) is imported
  assert {k: c.model[k] for k in ARCH} == ARCH
  assert c.model.image_size == 16 and c.model.drop_path_rate == 0.1   # the config's
  assert c.dataset.num_classes == 10
  c.init.source = ''
  assert pretrained.load(c) is None


def test_the_checkpoints_preprocessing_unless_the_config_keeps_its_own(monkeypatch):
  """pretrained_cfg's mean, std and crop_pct replace the config's, as timm's
  resolve_data_config would use them; a field the config keeps (main: set on the command
  line) stays; the describe line says whose each one is."""
  imported = _imported()
  imported.preprocessing = dict(mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), crop_pct=0.8,
                                interpolation='bilinear')
  monkeypatch.setattr(hub_import, 'load', lambda source, size: imported)
  c = _config()
  c.init.source = 'ckpt'
  pretrained.load(c)
  assert (c.dataset.mean, c.dataset.std, c.dataset.eval_crop_ratio) == (
      (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), 0.8)
  assert pretrained.describe(c, imported).endswith(
      '; preprocessing: mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), eval_crop_ratio=0.8 from '
      "the checkpoint (its interpolation 'bilinear' is not followed: evaluation resizes "
      'bicubic)')
  c = _config()
  c.update_from_flattened_dict({'init.source': 'ckpt', 'dataset.eval_crop_ratio': 0.9})
  pretrained.keep_command_line(c, {'init.source': 'ckpt', 'dataset.eval_crop_ratio': 0.9})
  assert c.init.keep_preprocessing == ('eval_crop_ratio',)
  pretrained.load(c)
  assert (c.dataset.mean, c.dataset.eval_crop_ratio) == ((0.3, 0.4, 0.5), 0.9)
  assert 'eval_crop_ratio=0.9 from the config (kept)' in pretrained.describe(c, imported)
  imported.preprocessing = {}        # a lone weights file: the config's, said so
  c = _config()
  c.init.source = 'ckpt'
  pretrained.load(c)
  assert c.dataset.mean == (0.5, 0.5, 0.5) and pretrained.describe(c, imported).endswith(
      '; preprocessing: mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_crop_ratio=1.0 from '
      'the config (the checkpoint names none)')
  c.init.keep_preprocessing = ('crop_pct',)
  with pytest.raises(ValueError, match=r"init.keep_preprocessing=\('crop_pct',\) names "
                                       r"'crop_pct'; each must be one of \('mean', 'std', "
                                       r"'eval_crop_ratio'\)"):
    pretrained.load(c)


@pytest.mark.parametrize('num_classes,keep_head,kept', [(10, True, True), (5, True, False),
                                                         (10, False, False)])
def test_start_params_keep_the_head_only_when_its_classes_are_the_data_sets(
    num_classes, keep_head, kept):
  c = _config(**ARCH)
  c.init.keep_head = keep_head
  imported = _imported(num_classes)
  start = pretrained.start_params(c, imported)
  flat = flax.traverse_util.flatten_dict(imported.params, sep='/')
  assert ('head/out/kernel' in start) == kept
  assert set(start) == {k for k in flat if kept or not k.startswith('head/')}
  pretrained.check_fits(c, imported, _abstract(c))   # fits either way


@pytest.mark.parametrize('change,fragments', [
    (dict(gate='g1'), ['no parameter block_0/attn/gate/kernel (32, 32)', 'model.gate']),
    (dict(svd_tap_layers=(1,), svd_rank=4), ['no parameter svd_proj_0/kernel (32, 4)',
                                             'model.svd_tap_layers']),
    (dict(head='mlp'), ['no parameter head/hidden/bias (32,)', 'model.head']),
])
def test_a_config_that_adds_parameters_is_refused_in_one_line(change, fragments):
  c = _config(**{**ARCH, **change})
  with pytest.raises(ValueError) as e:
    pretrained.check_fits(c, _imported(), _abstract(c))
  assert '\n' not in str(e.value)
  for f in fragments:
    assert f in str(e.value), str(e.value)


def test_a_tensor_that_does_not_fit_or_has_no_place_is_named():
  c = _config(**ARCH)
  imported = _imported()
  imported.params['pos_embedding'] = np.zeros((1, 17, 32), np.float32)
  with pytest.raises(ValueError, match=r"parameter pos_embedding is \(1, 17, 32\) in the "
                                       r"checkpoint but \(1, 16, 32\)"):
    pretrained.check_fits(c, imported, _abstract(c))
  imported = _imported()
  imported.params['extra'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r'parameter extra \(3,\) has no place'):
    pretrained.check_fits(c, imported, _abstract(c))


def _png(path, shape, mode=None, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  Image.fromarray(array, mode).save(path)


def test_image_folder_is_searched_recursively_in_any_format_pil_opens(tmp_path):
  _png(tmp_path / 'b.png', (9, 7, 4))                  # RGBA
  _png(tmp_path / 'a' / 'deep' / 'c.bmp', (5, 6))      # greyscale, another format
  _png(tmp_path / '.hidden' / 'd.png', (5, 5, 3))
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / 'broken.jpg').write_bytes(b'not a jpeg')
  src = imagefolder.ImageListSource(str(tmp_path))
  assert [os.path.relpath(p, tmp_path) for p in src.paths] == [
      'a/deep/c.bmp', 'b.png', 'broken.jpg']
  assert src[0]['image'].shape == (5, 6, 3) and src[1]['image'].shape == (9, 7, 3)
  assert src[2]['image'] is None and 'broken.jpg' in src[2]['unreadable']


def test_a_folder_without_images_is_refused_in_one_line(tmp_path):
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match=r"analysis.images='.*' holds no images"):
    imagefolder.ImageListSource(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='is not a folder'):
    imagefolder.ImageListSource(str(tmp_path / 'nope'))


def test_a_missing_source_is_one_line_before_any_work(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_main(['--config', 'configs/vanilla.py:quick', '--workdir', str(workdir),
                   '--config.init.source=/nonexistent/ckpt'])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: checkpoint '/nonexistent/ckpt' does not exist"), lines[0]
  assert not workdir.exists()
