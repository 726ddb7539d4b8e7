"""The ConvNet teacher against timm's ResNetV2 (the resnetv2_50x1_bit family: pre-activation
bottlenecks, GroupNorm, weight-standardised convs) built with our config: TF 'SAME'
padding (timm's stem_type='same' and StdConv2dSame, as its ViT-hybrid backbones use),
weight-standardisation eps 1e-10 and GroupNorm eps 1e-6 (flax's); for the quick
teacher's 'small' stem timm's stem is one 3x3 stride-1 StdConv2dSame. Our parameters are
mapped into timm's model; logits within 1e-5 on weights far from their init (measured:
4e-7; the two images' logits differ by > 100 times that).

Then the SGD the teacher trains with (configs/teacher_resnet.py: Nesterov momentum 0.9,
weight decay on the weight matrices) stepped 5 times against torch.optim.SGD(nesterov=True)
over timm's param_groups_weight_decay groups, float64, on the same gradients and a
changing lr, within 1e-10 relative."""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from timm.layers import GroupNormAct, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.optim import param_groups_weight_decay

from vit_jax import config_lib
from vit_jax import models
from vit_jax.train import optim
from refutil import randomize_

QUICK = config_lib.resnet_teacher_model(True)       # the quick teacher: stem 'small'
ATOL = 1e-5
IMAGENET = dict(QUICK, image_size=64, stage_sizes=(1, 2), stem='imagenet')   # the 7x7 stem


def _timm(cfg, num_classes=5, seed=0):
  w, g = cfg['width'], cfg['groups']
  net = ResNetV2(list(cfg['stage_sizes']), channels=tuple(4 * w * 2**i for i in range(len(
      cfg['stage_sizes']))), num_classes=num_classes, stem_chs=w, stem_type='same',
                 conv_layer=functools.partial(StdConv2dSame, eps=1e-10),
                 norm_layer=functools.partial(GroupNormAct, num_groups=g, eps=1e-6))
  if cfg['stem'] == 'small':
    net.stem = torch.nn.Sequential(collections.OrderedDict(
        conv=StdConv2dSame(3, w, 3, stride=1, eps=1e-10)))
  randomize_(net, seed)
  return net.eval()


def _names(params) -> dict:
  """Our parameter path -> timm's state_dict name."""
  out = {}
  for path in jax.tree_util.tree_leaves_with_path(params):
    keys = [k.key for k in path[0]]
    module, leaf = keys[:-1], keys[-1]
    if module[0] == 'stem':
      name = 'stem.conv'
    elif module[0] in ('norm', 'head'):
      name = 'head.fc' if module[0] == 'head' else 'norm'
    else:
      stage, block = module[0].removeprefix('stage').split('_block')
      layer = {'gn1': 'norm1', 'gn2': 'norm2', 'gn3': 'norm3', 'proj': 'downsample.conv'}.get(
          module[1], module[1])
      name = f'stages.{int(stage) - 1}.blocks.{int(block) - 1}.{layer}'
    out['/'.join(keys)] = f"{name}.{ {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)}"
  return out


def _to_torch(path, a):
  """Flax layout -> torch: conv (kh, kw, in, out) -> (out, in, kh, kw); the head's dense
  kernel (C, n) -> timm's 1x1 conv (n, C, 1, 1)."""
  a = np.asarray(a)
  if path == 'head/kernel':
    return a.T[:, :, None, None]
  return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a


def _from_torch(path, t):
  t = t.detach().numpy()
  if path == 'head/kernel':
    return t[:, :, 0, 0].T
  return t.transpose(2, 3, 1, 0) if t.ndim == 4 else t


def _ours_from(net, model, dtype=np.float32):
  params = jax.device_get(models.abstract_params(model))
  names, state = _names(params), net.state_dict()
  assert sorted(names.values()) == sorted(state), 'the two models have other parameters'
  flat = {p: _from_torch(p, state[n]).astype(dtype) for p, n in names.items()}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: flat['/'.join(k.key for k in path)], params)


@pytest.mark.parametrize('cfg', [QUICK, IMAGENET], ids=['small_stem', 'imagenet_stem'])
def test_resnet_matches_timm_resnetv2(cfg):
  net = _timm(cfg)
  model = models.build_model(dict(cfg), 5)
  params = _ours_from(net, model)
  x = np.random.default_rng(0).normal(size=(2, cfg['image_size'], cfg['image_size'], 3))
  x = x.astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got, _ = model.apply({'params': params}, jnp.asarray(x))
  assert np.abs(want[0] - want[1]).max() > 100 * ATOL     # the images tell apart
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_teacher_sgd_equals_torch_nesterov_sgd_over_timm_groups():
  cfg = config_lib.load('teacher_resnet', 'quick').optim
  cfg.weight_decay = 0.01                  # large enough that a wrong group shows at 1e-10
  lrs = [0.05, 0.1, 0.02, 0.08, 0.03]
  net = _timm(QUICK, seed=1).double()
  model = models.build_model(dict(QUICK), 5)
  groups = param_groups_weight_decay(net, cfg.weight_decay)
  assert len(groups) == 2 and groups[1]['weight_decay'] == cfg.weight_decay
  torch_opt = torch.optim.SGD(groups, lr=lrs[0], momentum=cfg.b1, nesterov=True)
  names, rng = _names(models.abstract_params(model)), np.random.default_rng(2)
  state_by_name = dict(net.named_parameters())
  with jax.enable_x64(True):
    params = _ours_from(net, model, np.float64)
    tx = optim.build(cfg, lambda step: jnp.asarray(lrs)[step])
    opt_state = tx.init(params)
    for lr in lrs:
      grads = jax.tree_util.tree_map_with_path(
          lambda path, p: rng.normal(size=p.shape), params)
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        key = '/'.join(k.key for k in path)
        state_by_name[names[key]].grad = torch.from_numpy(_to_torch(key, g).copy())
      for group in torch_opt.param_groups:
        group['lr'] = lr
      torch_opt.step()
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    want = _ours_from(net, model, np.float64)
    compared = 0
    for (path, got), ref in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(want)):
      scale = np.abs(ref).max()
      assert np.abs(np.asarray(got) - ref).max() <= 1e-10 * scale, jax.tree_util.keystr(path)
      compared += 1
  assert compared == len(names)
