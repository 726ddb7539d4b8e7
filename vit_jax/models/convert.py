"""PyTorch state dicts -> parameters of the project's ViT.

Two layouts are understood:

- 'timm': timm's VisionTransformer and VisionTransformerDistilled (DeiT,
  DeiT-III with LayerScale, register tokens, the gated Attention's G1 gate).
- 'seed000': seed 000's DeiTSmallSVD / DeiTSmallBaseline (torch's pre-norm
  TransformerEncoderLayer, the MLP head, the SVD tap projections).

Every parameter of the model must be found with its exact shape, and every
tensor of the state dict must find a place; the first one that does not is
named in a one-line error. Linear weights are transposed (torch stores
(out, in)), convolution kernels go from (out, in, h, w) to (h, w, in, out).
"""
import re
from typing import Callable, Mapping

import flax
import jax
import numpy as np

from vit_jax import models

_linear = lambda w: w.T
_conv = lambda w: w.transpose(2, 3, 1, 0)
_same = lambda w: w

# (flax path regex, torch key template, transform), tried in order.
_TIMM = [
    (r'patch_embed/kernel', 'patch_embed.proj.weight', _conv),
    (r'patch_embed/bias', 'patch_embed.proj.bias', _same),
    (r'cls', 'cls_token', _same),
    (r'dist', 'dist_token', _same),
    (r'registers', 'reg_token', _same),
    (r'pos_embedding', 'pos_embed', _same),
    (r'block_(\d+)/norm([12])/scale', r'blocks.\1.norm\2.weight', _same),
    (r'block_(\d+)/norm([12])/bias', r'blocks.\1.norm\2.bias', _same),
    (r'block_(\d+)/attn/(qkv|proj|gate)/kernel', r'blocks.\1.attn.\2.weight', _linear),
    (r'block_(\d+)/attn/(qkv|proj)/bias', r'blocks.\1.attn.\2.bias', _same),
    (r'block_(\d+)/ls_attn/scale', r'blocks.\1.ls1.gamma', _same),
    (r'block_(\d+)/ls_mlp/scale', r'blocks.\1.ls2.gamma', _same),
    (r'block_(\d+)/mlp/(fc[12])/kernel', r'blocks.\1.mlp.\2.weight', _linear),
    (r'block_(\d+)/mlp/(fc[12])/bias', r'blocks.\1.mlp.\2.bias', _same),
    (r'norm/scale', 'norm.weight', _same),
    (r'norm/bias', 'norm.bias', _same),
    (r'(head|head_dist)/out/kernel', r'\1.weight', _linear),
    (r'(head|head_dist)/out/bias', r'\1.bias', _same),
]

_SEED000 = [
    (r'patch_embed/kernel', 'patch_embed.0.weight', _conv),
    (r'patch_embed/bias', 'patch_embed.0.bias', _same),
    (r'cls', 'cls_token', _same),
    (r'pos_embedding', 'pos_embed', _same),
    (r'block_(\d+)/norm([12])/scale', r'layers.\1.norm\2.weight', _same),
    (r'block_(\d+)/norm([12])/bias', r'layers.\1.norm\2.bias', _same),
    (r'block_(\d+)/attn/qkv/kernel', r'layers.\1.self_attn.in_proj_weight', _linear),
    (r'block_(\d+)/attn/qkv/bias', r'layers.\1.self_attn.in_proj_bias', _same),
    (r'block_(\d+)/attn/proj/kernel', r'layers.\1.self_attn.out_proj.weight', _linear),
    (r'block_(\d+)/attn/proj/bias', r'layers.\1.self_attn.out_proj.bias', _same),
    (r'block_(\d+)/mlp/fc1/kernel', r'layers.\1.linear1.weight', _linear),
    (r'block_(\d+)/mlp/fc1/bias', r'layers.\1.linear1.bias', _same),
    (r'block_(\d+)/mlp/fc2/kernel', r'layers.\1.linear2.weight', _linear),
    (r'block_(\d+)/mlp/fc2/bias', r'layers.\1.linear2.bias', _same),
    (r'norm/scale', 'norm.weight', _same),
    (r'norm/bias', 'norm.bias', _same),
    (r'svd_proj_(\d+)/kernel', r'svd_projs.\1.weight', _linear),
    (r'head/hidden/kernel', 'head.0.weight', _linear),
    (r'head/hidden/bias', 'head.0.bias', _same),
    (r'head/norm/scale', 'head.2.weight', _same),
    (r'head/norm/bias', 'head.2.bias', _same),
    (r'head/out/kernel', 'head.4.weight', _linear),
    (r'head/out/bias', 'head.4.bias', _same),
]

# Tensors a layout may hold that carry nothing the forward pass uses.
_UNUSED = {
    'timm': (),
    # seed 000 builds a LayerNorm its forward pass never calls.
    'seed000': (r'patch_norm\.(weight|bias)',),
}
LAYOUTS = {'timm': _TIMM, 'seed000': _SEED000}


def _torch_key(layout: str, path: str) -> tuple[str, Callable]:
  for pattern, template, fn in LAYOUTS[layout]:
    if re.fullmatch(pattern, path):
      return re.sub(pattern, template, path), fn
  raise ValueError(f'parameter {path} has no counterpart in the {layout!r} layout')


def from_torch(state_dict: Mapping[str, object], model, layout: str = 'timm',
               dtype=np.float32) -> dict:
  """A torch state dict (tensors or arrays) -> params for `model` (a ViT), as `dtype`.

  Gradients convert the same way (the tests give torch's and ours the same ones).
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r} is not one of {tuple(LAYOUTS)}')
  arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
            for k, v in state_dict.items()}
  flat = flax.traverse_util.flatten_dict(models.abstract_params(model), sep='/')
  out, used = {}, set()
  for path, leaf in flat.items():
    key, fn = _torch_key(layout, path)
    if key not in arrays:
      raise ValueError(f'the {layout} state dict has no {key!r} for parameter {path} '
                       f'{tuple(leaf.shape)}')
    value = fn(arrays[key]).astype(dtype)
    if value.shape != leaf.shape:
      raise ValueError(f'{key} of shape {tuple(arrays[key].shape)} does not fit parameter '
                       f'{path} of shape {tuple(leaf.shape)}')
    out[path] = value
    used.add(key)
  for key, value in arrays.items():
    unused = any(re.fullmatch(p, key) for p in _UNUSED[layout])
    if key not in used and not unused:
      raise ValueError(f'the {layout} state dict tensor {key!r} {tuple(value.shape)} has no '
                       f'place in the model')
  return jax.tree.map(np.asarray, flax.traverse_util.unflatten_dict(out, sep='/'))


_INVERSE = {id(_linear): _linear, id(_conv): lambda w: w.transpose(3, 2, 0, 1),
            id(_same): _same}


def to_torch(params, layout: str = 'timm') -> dict[str, np.ndarray]:
  """The inverse of from_torch: params -> the layout's state dict, as numpy (float32)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r} is not one of {tuple(LAYOUTS)}')
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params, sep='/').items():
    key, fn = _torch_key(layout, path)
    out[key] = np.ascontiguousarray(_INVERSE[id(fn)](np.asarray(value, np.float32)))
  return out
