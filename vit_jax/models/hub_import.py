"""Pretrained ViT checkpoints in: timm / Hugging Face hub files -> the project's ViT.

`load(source)` reads a checkpoint of a family this project's ViT can express
(DeiT, distilled DeiT, DeiT-III, AugReg ViT, DINOv2 with or without registers)
and returns its architecture as config.model fields plus the parameters:

- `model.safetensors` / `pytorch_model.bin` (timm's state dict; the .bin needs
  torch), alone or in a directory with the `config.json` timm writes
  (`timm.models._hub.save_config_for_hf`), as the hub stores them;
- a big_vision / AugReg `.npz` (the ViT repository's naming, or big_vision's);
- `hf-hub:ORG/NAME[@REVISION]`, looked up offline in the Hugging Face cache.

The geometry (width, depth, patch, registers, dist token, LayerScale, position
embedding length) comes from the tensor shapes; only the number of heads needs
the config (or, for .npz, the attention kernels' shape). Every tensor must find
its place: the first one that does not is named in a one-line error.

hub_export.py writes the other way: a vit_jax model as the hub layout timm reads.
"""
import dataclasses
import json
import math
import os
import re
from typing import Mapping

import numpy as np

from vit_jax import models
from vit_jax.models import convert
from vit_jax.models import vit

# timm's state-dict names of the ViTs this module maps (convert._TIMM's targets).
_TIMM_KEYS = (
    r'patch_embed\.proj\.(weight|bias)', r'(cls|dist|reg)_token', r'pos_embed',
    r'blocks\.\d+\.norm[12]\.(weight|bias)', r'blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)',
    r'blocks\.\d+\.ls[12]\.gamma', r'blocks\.\d+\.mlp\.fc[12]\.(weight|bias)',
    r'norm\.(weight|bias)', r'head(_dist)?\.(weight|bias)')

# Heads by the size word of timm's architecture names (timm's model functions).
HEADS = {'tiny': 3, 'small': 6, 'medium': 8, 'base': 12, 'large': 16, 'huge': 16,
          'giant': 24}
# DeiT, DeiT-III, AugReg ViT and DINOv2 names, e.g. deit_small_distilled_patch16_224,
# deit3_small_patch16_384, vit_small_patch16_224, vit_small_patch14_reg4_dinov2.
ARCH_NAME = re.compile(r'(?P<kind>deit3|deit|vit)_(?P<size>[a-z]+)_(?P<distilled>distilled_)?'
                   r'patch(?P<patch>\d+)_(?:reg(?P<reg>\d+)_)?(?P<tail>dinov2|\d+)')
# LayerScale init of the families that have it (their timm model functions).
_LAYERSCALE_INIT = {'deit3': 1e-6, 'dinov2': 1e-5, 'dinov2_reg': 1e-5}
# model_args (timm's config.json) this loader understands; any other changes the
# network in a way the tensors do not show, so it is refused.
_MODEL_ARGS = {'img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim',
               'depth', 'num_heads', 'mlp_ratio', 'qkv_bias', 'init_values', 'class_token',
               'no_embed_class', 'reg_tokens', 'drop_rate', 'pos_drop_rate', 'proj_drop_rate',
               'attn_drop_rate', 'drop_path_rate', 'dynamic_img_size'}
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
# pretrained_cfg's keys of the evaluation preprocessing (timm's resolve_data_config reads them).
PREPROCESSING = ('mean', 'std', 'crop_pct', 'interpolation')


@dataclasses.dataclass
class Imported:
  model: dict        # config.model fields of the architecture; image_size is the native one
  num_classes: int   # of its classifier head; 0 = none: logits are the final-normed cls features
  params: dict       # numpy pytree for the model at the requested image_size
  source: str        # the resolved weights file
  family: str        # 'deit', 'deit_distilled', 'deit3', 'augreg', 'dinov2', 'dinov2_reg'
  # What its config.json's pretrained_cfg says it was evaluated with (PREPROCESSING keys it
  # names; none without a config.json).
  preprocessing: dict = dataclasses.field(default_factory=dict)


# --- finding the files --------------------------------------------------------------

def hf_cache_dir() -> str:
  """huggingface_hub's cache folder, read from the environment now (HF_HUB_CACHE, HF_HOME)."""
  if os.environ.get('HF_HUB_CACHE'):
    return os.environ['HF_HUB_CACHE']
  home = os.environ.get('HF_HOME') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'huggingface')
  return os.path.join(home, 'hub')


def _from_hf_cache(repo: str) -> tuple[str, str | None]:
  from huggingface_hub import try_to_load_from_cache
  repo, _, revision = repo.partition('@')
  cache = hf_cache_dir()
  found = lambda name: try_to_load_from_cache(repo, name, cache_dir=cache,
                                              revision=revision or None)
  for name in WEIGHT_FILES:
    weights = found(name)
    if isinstance(weights, str):
      config = found('config.json')
      return weights, config if isinstance(config, str) else None
  raise FileNotFoundError(
      f'hf-hub:{repo} has no {" or ".join(WEIGHT_FILES)} in the Hugging Face cache {cache} '
      f'(HF_HUB_CACHE / HF_HOME); these machines cannot download: fetch it elsewhere with '
      f'huggingface_hub.snapshot_download({repo!r}) and copy the cache or the folder here')


def resolve(source: str) -> tuple[str, str | None]:
  """source -> (weights file, its config.json or None)."""
  if source.startswith('hf-hub:'):
    return _from_hf_cache(source[len('hf-hub:'):])
  if os.path.isdir(source):
    for name in WEIGHT_FILES:
      if os.path.isfile(os.path.join(source, name)):
        weights = os.path.join(source, name)
        break
    else:
      raise FileNotFoundError(f'{source} holds none of {WEIGHT_FILES} (the hub layout: '
                              f'config.json + model.safetensors or pytorch_model.bin)')
  elif os.path.isfile(source):
    weights = source
  else:
    raise FileNotFoundError(f'checkpoint {source!r} does not exist (a .safetensors, .bin or .npz '
                            f'file, a folder in the hub layout, or hf-hub:ORG/NAME)')
  config = os.path.join(os.path.dirname(weights), 'config.json')
  return weights, config if os.path.isfile(config) else None


def _read(weights: str) -> tuple[dict[str, np.ndarray], int | None]:
  """(timm state dict as numpy, the number of heads where the file's shapes tell it)."""
  if weights.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return load_file(weights), None
  if weights.endswith('.bin') or weights.endswith('.pth'):
    try:
      import torch
    except ImportError:
      raise ValueError(f'{weights} is a torch pickle and torch is not installed; install torch '
                       f'or use the model.safetensors of the same checkpoint') from None
    state = torch.load(weights, map_location='cpu', weights_only=True)
    state = state.get('model', state) if isinstance(state, dict) else state
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items()}, None
  if weights.endswith('.npz'):
    with np.load(weights) as f:
      return npz_to_timm({k: f[k] for k in f.files})
  raise ValueError(f'{weights}: unknown weights format; expected .safetensors, .bin or .npz')


# --- big_vision / AugReg .npz -------------------------------------------------------

def npz_to_timm(w: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
  """A ViT .npz (the vision_transformer repository's AugReg naming, or big_vision's, with or
  without the 'params/' prefix, blocks stacked or not) -> timm's state dict, as timm's own
  `_load_weights` reads it, and the number of heads (the attention kernels' middle axis).
  Every array must be used; the first that is not is named."""
  prefix = next((p for p in ('', 'params/', 'opt/target/') if f'{p}embedding/kernel' in w), None)
  if prefix is None:
    first = next(iter(w), None)
    raise ValueError(f'the .npz has no embedding/kernel (first array: {first!r}); not a ViT '
                     f'checkpoint of the vision_transformer / big_vision layout')
  big_vision = f'{prefix}pos_embedding' in w
  mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
  used, out = set(), {}

  def take(key, idx=None):
    used.add(key)
    return np.asarray(w[key] if idx is None else w[key][idx], np.float32)

  kernel = take(f'{prefix}embedding/kernel')
  out['patch_embed.proj.weight'] = kernel.transpose(3, 2, 0, 1)
  out['patch_embed.proj.bias'] = take(f'{prefix}embedding/bias')
  out['cls_token'] = take(f'{prefix}cls')
  pos = f'{prefix}pos_embedding' if big_vision else f'{prefix}Transformer/posembed_input/pos_embedding'
  out['pos_embed'] = take(pos)
  stacked = f'{prefix}Transformer/encoderblock/LayerNorm_0/scale' in w
  depth = (w[f'{prefix}Transformer/encoderblock/LayerNorm_0/scale'].shape[0] if stacked else
           sum(bool(re.fullmatch(re.escape(prefix) + r'Transformer/encoderblock_\d+/LayerNorm_0/scale',
                                 k)) for k in w))
  for i in range(depth):
    bp, idx = ((f'{prefix}Transformer/encoderblock/', i) if stacked else
               (f'{prefix}Transformer/encoderblock_{i}/', None))
    ap = f'{bp}MultiHeadDotProductAttention_{mha}/'
    t = f'blocks.{i}.'
    out[t + 'norm1.weight'] = take(f'{bp}LayerNorm_0/scale', idx)
    out[t + 'norm1.bias'] = take(f'{bp}LayerNorm_0/bias', idx)
    # query/key/value kernels (D, H, d) -> rows of timm's qkv (3 H d, D).
    out[t + 'attn.qkv.weight'] = np.concatenate(
        [take(f'{ap}{n}/kernel', idx).reshape(kernel.shape[-1], -1).T
         for n in ('query', 'key', 'value')])
    out[t + 'attn.qkv.bias'] = np.concatenate(
        [take(f'{ap}{n}/bias', idx).reshape(-1) for n in ('query', 'key', 'value')])
    out[t + 'attn.proj.weight'] = take(f'{ap}out/kernel', idx).reshape(-1, kernel.shape[-1]).T
    out[t + 'attn.proj.bias'] = take(f'{ap}out/bias', idx)
    out[t + 'norm2.weight'] = take(f'{bp}LayerNorm_{ln2}/scale', idx)
    out[t + 'norm2.bias'] = take(f'{bp}LayerNorm_{ln2}/bias', idx)
    for r in range(2):
      out[t + f'mlp.fc{r + 1}.weight'] = take(f'{bp}MlpBlock_{mlp}/Dense_{r}/kernel', idx).T
      out[t + f'mlp.fc{r + 1}.bias'] = take(f'{bp}MlpBlock_{mlp}/Dense_{r}/bias', idx)
  out['norm.weight'] = take(f'{prefix}Transformer/encoder_norm/scale')
  out['norm.bias'] = take(f'{prefix}Transformer/encoder_norm/bias')
  if f'{prefix}head/kernel' in w:
    out['head.weight'] = take(f'{prefix}head/kernel').T
    out['head.bias'] = take(f'{prefix}head/bias')
  for key in w:
    if key not in used:
      raise ValueError(f'the .npz array {key!r} {tuple(w[key].shape)} has no place in the '
                       f'project\'s ViT')
  q = w.get(f'{prefix}Transformer/encoderblock{"" if stacked else "_0"}/'
            f'MultiHeadDotProductAttention_{mha}/query/kernel')
  return out, (int(q.shape[-2]) if q is not None else None)


# --- position embeddings at another size --------------------------------------------

def _aa_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's F.interpolate(mode='bicubic', antialias=True,
  align_corners=False) along one axis: PIL's separable filter, cubic with a=-0.5, its
  support widened by the scale when shrinking, cut at the edges and renormalised
  (aten/src/ATen/native/cpu/UpSampleKernel.cpp, _compute_indices_min_size_weights_aa)."""
  a = -0.5

  def cubic(x):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

  scale = n_in / n_out
  support = 2.0 * max(scale, 1.0)
  inv = 1.0 / scale if scale > 1.0 else 1.0
  out = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    j = np.arange(lo, hi)
    w = cubic((j - center + 0.5) * inv)
    out[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
  return out


def resample_pos_embed(pos: np.ndarray, new_grid: int, num_prefix: int) -> np.ndarray:
  """timm's resample_abs_pos_embed as its checkpoint_filter_fn calls it (bicubic,
  antialias=True): the (1, prefix + g*g, D) embedding to a new_grid x new_grid grid, the
  prefix tokens' rows kept."""
  prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
  old = math.isqrt(grid.shape[1])
  if old * old != grid.shape[1]:
    raise ValueError(f'position embedding of {grid.shape[1]} patch tokens is not a square grid')
  if old == new_grid:
    return pos
  m = _aa_bicubic_weights(old, new_grid)
  g = grid.reshape(old, old, -1).astype(np.float64)
  g = np.einsum('ih,jw,hwd->ijd', m, m, g).reshape(1, new_grid * new_grid, -1)
  return np.concatenate([prefix, g.astype(pos.dtype)], axis=1)


# --- the architecture -----------------------------------------------------------------

def _first_foreign(state: Mapping[str, np.ndarray], where: str) -> None:
  for key, value in state.items():
    if not any(re.fullmatch(p, key) for p in _TIMM_KEYS):
      raise ValueError(f'{where}: tensor {key!r} {tuple(np.shape(value))} does not fit the '
                       f'project\'s ViT (timm VisionTransformer names: patch_embed, cls/dist/reg '
                       f'tokens, pos_embed, blocks.N.{{norm,attn,ls,mlp}}, norm, head)')


def name_family(arch: str, where: str) -> tuple[str, int | None]:
  """(family, heads from the name) of a timm architecture name."""
  m = ARCH_NAME.fullmatch(arch)
  if not m or m['size'] not in HEADS:
    raise ValueError(f'{where}: architecture {arch!r} is not one this loader maps (timm\'s '
                     f'deit_*, deit_*_distilled_*, deit3_*, vit_*_patchP_S (AugReg) and '
                     f'vit_*_dinov2 / vit_*_regN_dinov2)')
  if m['tail'] == 'dinov2':
    family = 'dinov2_reg' if m['reg'] else 'dinov2'
  elif m['kind'] == 'deit3':
    family = 'deit3'
  elif m['kind'] == 'deit':
    family = 'deit_distilled' if m['distilled'] else 'deit'
  else:
    family = 'augreg'
  return family, HEADS[m['size']]


def architecture(state: Mapping[str, np.ndarray], config: dict | None, where: str,
                 family: str | None = None, heads: int | None = None) -> tuple[dict, int, str]:
  """(config.model fields, num_classes, family) of a timm ViT state dict and its config.json."""
  _first_foreign(state, where)
  for key in ('patch_embed.proj.weight', 'cls_token', 'pos_embed', 'blocks.0.norm1.weight',
              'blocks.0.mlp.fc1.weight'):
    if key not in state:
      raise ValueError(f'{where}: no {key!r}; not a timm VisionTransformer state dict')
  config = dict(config or {})
  args = dict(config.get('model_args') or {})
  for key, value in args.items():
    if key not in _MODEL_ARGS:
      raise ValueError(f'{where}: config.json model_args {key}={value!r} changes the network in '
                       f'a way this loader does not map; it maps {sorted(_MODEL_ARGS)}')
  pool = args.get('global_pool', config.get('global_pool', 'token'))
  if pool not in ('token', None, ''):
    raise ValueError(f'{where}: global_pool={pool!r}; the project\'s ViT reads the cls token '
                     f'(global_pool=\'token\')')
  if config.get('architecture'):
    family, named_heads = name_family(config['architecture'], where)
    heads = args.get('num_heads', heads or named_heads)
  if family is None:
    raise ValueError(f'{where}: no config.json naming the architecture beside it; the hub '
                     f'layout has one (timm.models._hub.save_for_hf writes it)')
  if heads is None:
    raise ValueError(f'{where}: the number of heads is not in the tensors and no config.json '
                     f'(architecture or model_args.num_heads) gives it')
  width, channels, patch, _ = state['patch_embed.proj.weight'].shape
  depth = sum(bool(re.fullmatch(r'blocks\.\d+\.norm1\.weight', k)) for k in state)
  hidden = state['blocks.0.mlp.fc1.weight'].shape[0]
  registers = state['reg_token'].shape[1] if 'reg_token' in state else 0
  distillation = 'dist_token' in state
  special = vit.special_tokens(distillation)
  tokens = state['pos_embed'].shape[1]
  if math.isqrt(tokens) ** 2 == tokens:
    pos_embed, grid = 'patches', math.isqrt(tokens)
  elif math.isqrt(tokens - special) ** 2 == tokens - special:
    pos_embed, grid = 'all', math.isqrt(tokens - special)
  else:
    raise ValueError(f'{where}: pos_embed {tuple(state["pos_embed"].shape)} covers neither a '
                     f'square grid of patches nor the {special} cls/dist token(s) plus one (with '
                     f'registers, timm\'s layout must be no_embed_class)')
  layerscale = 'blocks.0.ls1.gamma' in state
  init = args.get('init_values') or _LAYERSCALE_INIT.get(family, 1e-5)
  mlp_ratio = hidden / width
  if int(width * mlp_ratio) != hidden:
    mlp_ratio = (hidden + 0.5) / width
  model = dict(patch_size=int(patch), width=int(width), depth=int(depth), num_heads=int(heads),
               mlp_ratio=float(mlp_ratio), qkv_bias='blocks.0.attn.qkv.bias' in state,
               layerscale_init=float(init) if layerscale else 0.0,
               num_registers=int(registers), pos_embed=pos_embed, distillation=distillation,
               head='linear', layer_norm_eps=1e-6, image_size=int(grid * patch))
  num_classes = int(state['head.weight'].shape[0]) if 'head.weight' in state else 0
  return model, num_classes, family


def preprocessing(config: dict | None) -> dict:
  """The PREPROCESSING values a timm config.json names (pretrained_cfg, or the older layout
  that holds them at the top level), mean and std as tuples."""
  pc = (config or {}).get('pretrained_cfg', config) or {}
  return {k: tuple(pc[k]) if isinstance(pc[k], list) else pc[k] for k in PREPROCESSING
          if pc.get(k) is not None}


def load(source: str, image_size: int | None = None) -> Imported:
  """A pretrained checkpoint (see the module docstring) -> Imported, at `image_size`
  (default: the checkpoint's own), position embeddings resampled as timm does."""
  weights, config_file = resolve(source)
  config = None
  if config_file:
    with open(config_file) as f:
      config = json.load(f)
  state, heads = _read(weights)
  family = 'augreg' if weights.endswith('.npz') else None
  model, num_classes, family = architecture(state, config, weights, family, heads)
  native = models.build_model(model, num_classes)   # the other fields: no effect here
  try:
    params = convert.from_torch(state, native, 'timm')
  except ValueError as e:
    raise ValueError(f'{weights}: {e}') from None
  size = image_size or model['image_size']
  if size % model['patch_size']:
    raise ValueError(f'image_size={size} is not a multiple of the checkpoint\'s patch size '
                     f'{model["patch_size"]}')
  if size != model['image_size']:
    prefix = 0 if model['pos_embed'] == 'patches' else vit.special_tokens(model['distillation'])
    params['pos_embedding'] = resample_pos_embed(params['pos_embedding'],
                                                 size // model['patch_size'], prefix)
  return Imported(model=model, num_classes=num_classes, params=params, source=weights,
                  family=family, preprocessing=preprocessing(config))
