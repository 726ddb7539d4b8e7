"""vit_jax.models.hub against timm: checkpoints of every family, written exactly as the hub
stores them (timm's own save_for_hf: model.safetensors + config.json), loaded by
hub.load and run by the project's ViT, give timm's logits (or, headless, its features)
within 1e-5 on the same images; random weights made non-uniform (refutil.randomize_) so
that attention is peaked and a misplaced tensor cannot hide."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models._hub import save_for_hf

from vit_jax.models import hub
from vit_jax.models import vit
from refutil import images as _images, mean_peak, randomize_

ATOL = 1e-5
SMALL = dict(embed_dim=48, depth=2, num_heads=4)


def _nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _timm(arch, seed, **kwargs):
  model = timm.create_model(arch, pretrained=False, **{**SMALL, **kwargs}).eval()
  randomize_(model, seed=seed)
  return model


def _save(model, folder, drop_model_args=False):
  """The hub layout, as timm's push_to_hub writes it (save_for_hf, safetensors)."""
  save_for_hf(model, str(folder), safe_serialization=True)
  if drop_model_args:   # the hub's older configs: architecture + pretrained_cfg only
    path = os.path.join(folder, 'config.json')
    with open(path) as f:
      cfg = json.load(f)
    cfg.pop('model_args')
    with open(path, 'w') as f:
      json.dump(cfg, f)
  return str(folder)


def _ours(imported, images):
  model = vit.ViT(num_classes=imported.num_classes,
                  **{**imported.model, 'image_size': images.shape[1]})
  logits, out = model.apply({'params': imported.params}, jnp.asarray(images), capture=True)
  return np.asarray(logits), out


def _check(ref, imported, images):
  with torch.no_grad():
    want = ref(_nchw(images)).numpy()
  got, out = _ours(imported, images)
  assert got.shape == want.shape
  tokens = out['attn'][0].shape[-1]
  assert mean_peak(out['attn']) > 3.0 / tokens      # peaked: a q/k mistake cannot hide
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize('arch,family,layout', [
    ('deit_small_patch16_224', 'deit', dict(pos_embed='all', layerscale_init=0.0)),
    ('deit_small_distilled_patch16_224', 'deit_distilled',
     dict(pos_embed='all', distillation=True)),
    ('deit3_small_patch16_224', 'deit3', dict(pos_embed='patches', layerscale_init=1e-6)),
])
def test_deit_families_from_the_hub_layout(tmp_path, arch, family, layout):
  ref = _timm(arch, seed=1, img_size=32, patch_size=8, num_classes=7)
  imported = hub.load(_save(ref, tmp_path))
  assert imported.family == family and imported.num_classes == 7
  assert imported.source == str(tmp_path / 'model.safetensors')
  assert {k: imported.model[k] for k in layout} == layout
  assert imported.model['image_size'] == 32 and imported.model['num_heads'] == 4
  _check(ref, imported, _images(size=32))


def test_heads_from_the_architecture_name(tmp_path):
  """The hub's older config.json has no model_args: 'small' => 6 heads."""
  ref = _timm('deit3_small_patch16_224', seed=2, img_size=32, patch_size=8, num_classes=5,
              num_heads=6)
  imported = hub.load(_save(ref, tmp_path, drop_model_args=True))
  assert imported.model['num_heads'] == 6
  _check(ref, imported, _images(size=32))
