"""A vit_jax ViT out as the hub layout timm reads: model.safetensors + config.json.

`export_timm` writes it (timm.create_model('local-dir:' + folder, pretrained=True) builds
it), refusing in one line a model timm's VisionTransformer cannot express; hub_import.py
reads such folders back.
"""
import dataclasses
import os
import stat
from typing import Any, Mapping

import jax
import numpy as np

from vit_jax import files
from vit_jax import models
from vit_jax.models import convert
from vit_jax.models import hub_import
from vit_jax.models import vit

# The ViT architectures timm registers, by family: timm.create_model builds only a registered
# name (its model function); the config.json model_args then set every field over the name's
# defaults. (DINOv2 names carry no resolution: 518.)
TIMM_NAMES = (
    'deit_tiny_patch16_224', 'deit_small_patch16_224', 'deit_base_patch16_224',
    'deit_base_patch16_384', 'deit_tiny_distilled_patch16_224',
    'deit_small_distilled_patch16_224', 'deit_base_distilled_patch16_224',
    'deit_base_distilled_patch16_384', 'deit3_small_patch16_224', 'deit3_small_patch16_384',
    'deit3_medium_patch16_224', 'deit3_base_patch16_224', 'deit3_base_patch16_384',
    'deit3_large_patch16_224', 'deit3_large_patch16_384', 'deit3_huge_patch14_224',
    'vit_small_patch14_dinov2', 'vit_base_patch14_dinov2', 'vit_large_patch14_dinov2',
    'vit_giant_patch14_dinov2', 'vit_small_patch14_reg4_dinov2', 'vit_base_patch14_reg4_dinov2',
    'vit_large_patch14_reg4_dinov2', 'vit_giant_patch14_reg4_dinov2')
# Widths of timm's size words (DINOv2's giant: 1536).
_WIDTHS = {'tiny': 192, 'small': 384, 'medium': 512, 'base': 768, 'large': 1024, 'huge': 1280,
           'giant': 1536}
DINOV2_SIZE = 518


def vit_fields(m: Mapping[str, Any]) -> dict:
  """Model fields (config.model, or an imported checkpoint's), those `m` leaves out at the
  ViT's own defaults: the model models.build_model builds from `m`."""
  defaults = {f.name: f.default for f in dataclasses.fields(vit.ViT)
              if f.default is not dataclasses.MISSING and f.name not in ('parent', 'name')}
  return {**defaults, **m}


def check_exportable(m: Mapping[str, Any], num_classes: int) -> None:
  """One line for the first field timm's VisionTransformer (through config.json) cannot express."""
  if m.get('arch', 'vit') != 'vit':    # 'arch' is a field of ConvNet models only
    raise ValueError(f"model.arch={m['arch']!r} cannot be exported to timm; it accepts a ViT")
  m = vit_fields(m)
  refusals = (
      (m['gate'] == 'g2', 'gate', "'none' (G2 gates the values; timm's Attention has no such "
                                  "gate)"),
      (m['gate'] == 'g1', 'gate', "'none' (timm's Attention has the G1 gate, gated=True, but "
                                  "VisionTransformer takes it only as an attn_layer class, "
                                  "which config.json cannot name)"),
      (m['head'] != 'linear', 'head', "'linear' (timm's head is one Linear)"),
      (bool(m['svd_tap_layers']), 'svd_tap_layers', '() (timm has no SVD taps)'),
      (m['layer_norm_eps'] != 1e-6, 'layer_norm_eps',
       "1e-6 (timm's ViT LayerNorm; config.json cannot set norm_layer)"),
      (m['pos_embed'] == 'all' and m['num_registers'] > 0, 'pos_embed',
       "'patches' with registers (timm's embed-class layout gives registers a position too)"),
      (m['distillation'] and m['num_registers'] > 0, 'num_registers',
       "0 with distillation (timm's VisionTransformerDistilled has no registers)"),
      (num_classes < 0, 'num_classes', '>= 0'),
  )
  for bad, name, accepted in refusals:
    if bad:
      value = num_classes if name == 'num_classes' else m[name]
      raise ValueError(f'model.{name}={value!r} cannot be exported to timm; it accepts '
                       f'{accepted}')


def export_family(m: Mapping[str, Any]) -> str:
  """The family whose layout the model has: DeiT's dist token; LayerScale with position
  embeddings on the cls token too (DINOv2), or on the patches only (DeiT-III; with
  registers at patch 14, DINOv2's); no LayerScale: DeiT."""
  m = vit_fields(m)
  if m['distillation']:
    return 'deit_distilled'
  if m['layerscale_init']:
    if m['pos_embed'] == 'all':
      return 'dinov2'
    if m['num_registers'] and int(m['patch_size']) == 14:
      return 'dinov2_reg'
  elif m['pos_embed'] == 'all':
    return 'deit'
  return 'deit3'


def timm_architecture(m: Mapping[str, Any]) -> str:
  """timm's registered name of the model's family that is nearest to it: the same patch,
  then the nearest width, then the nearest resolution (deit3_small_patch16_224 for a
  DeiT-III ViT-S/16 at 224, vit_small_patch14_dinov2 for a DINOv2 ViT-S/14 at 518)."""
  family = export_family(m)

  def distance(name):
    g = hub_import.ARCH_NAME.fullmatch(name)
    size = DINOV2_SIZE if g['tail'] == 'dinov2' else int(g['tail'])
    return (int(g['patch']) != int(m['patch_size']), abs(_WIDTHS[g['size']] - int(m['width'])),
            abs(size - int(m['image_size'])))
  return min((n for n in TIMM_NAMES if hub_import.name_family(n, n)[0] == family),
             key=distance)


def timm_config(m: Mapping[str, Any], num_classes: int, preprocessing: Mapping[str, Any]) -> dict:
  """config.json as timm's save_config_for_hf writes it for this model; `preprocessing`
  (mean, std, crop_pct, interpolation) is what it was evaluated with, which timm's
  resolve_data_config + create_transform then reproduce."""
  m = vit_fields(m)
  s = int(m['image_size'])
  layerscale = m['layerscale_init']
  args = dict(img_size=[s, s], patch_size=int(m['patch_size']), in_chans=3,
              num_classes=num_classes, global_pool='token', embed_dim=int(m['width']),
              depth=int(m['depth']), num_heads=int(m['num_heads']),
              mlp_ratio=float(m['mlp_ratio']), qkv_bias=bool(m['qkv_bias']),
              init_values=float(layerscale) if layerscale else None, class_token=True,
              no_embed_class=m['pos_embed'] == 'patches', reg_tokens=int(m['num_registers']))
  classifier = ['head', 'head_dist'] if m['distillation'] else 'head'
  pretrained_cfg = dict(tag='vit_jax', custom_load=False, input_size=[3, s, s],
                        fixed_input_size=True, interpolation=preprocessing['interpolation'],
                        crop_pct=float(preprocessing['crop_pct']), crop_mode='center',
                        mean=[float(v) for v in preprocessing['mean']],
                        std=[float(v) for v in preprocessing['std']], num_classes=num_classes,
                        pool_size=None, first_conv='patch_embed.proj', classifier=classifier)
  return dict(architecture=timm_architecture(m), num_classes=num_classes,
              num_features=int(m['width']), global_pool='token', model_args=args,
              pretrained_cfg=pretrained_cfg)


def export_timm(params, model_config, num_classes: int, out_dir: str, *,
                preprocessing: Mapping[str, Any]) -> str:
  """Writes `out_dir` in the hub layout timm reads (model.safetensors + config.json;
  timm.create_model('local-dir:' + out_dir, pretrained=True) builds it), atomically: a
  temporary folder beside it, renamed into place, with the modes the umask gives new files.
  `preprocessing`: timm_config's. Returns out_dir."""
  from safetensors.numpy import save_file
  m = dict(model_config)
  check_exportable(m, num_classes)
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise FileExistsError(f'export folder {out_dir} exists and is not empty; choose a new one')
  state = convert.to_torch(params, 'timm')
  expected = convert.to_torch(jax_abstract(m, num_classes), 'timm')
  extra = sorted(set(state) - set(expected))
  if extra:
    raise ValueError(f'params do not fit model_config: {extra[0]} is not in the model')
  for key, value in expected.items():
    if key not in state or state[key].shape != value.shape:
      got = tuple(state[key].shape) if key in state else 'missing'
      raise ValueError(f'params do not fit model_config: {key} is {got}, the model has '
                       f'{tuple(value.shape)}')
  config = timm_config(m, num_classes, preprocessing)
  with files.atomic_dir(out_dir) as tmp:    # an empty out_dir is replaced by it
    files.write_json(os.path.join(tmp, 'config.json'), config, indent=2)
    weights = os.path.join(tmp, 'model.safetensors')
    save_file(state, weights)   # safetensors writes 0600; give it the mode open() gave
    os.chmod(weights, stat.S_IMODE(os.stat(os.path.join(tmp, 'config.json')).st_mode))
  return out_dir


def jax_abstract(m: Mapping[str, Any], num_classes: int):
  """Parameters (zeros) of the ViT that model fields `m` describe."""
  model = models.build_model(m, num_classes)
  return jax.tree.map(lambda a: np.zeros(a.shape, np.float32), models.abstract_params(model))
