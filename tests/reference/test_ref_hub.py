"""vit_jax.models.hub_import and hub_export against timm: checkpoints of every family, written exactly as the hub
stores them (timm's own save_for_hf: model.safetensors + config.json), loaded by
hub_import.load and run by the project's ViT, give timm's logits (or, headless, its features)
within 1e-5 on the same images; random weights made non-uniform (refutil.randomize_) so
that attention is peaked and a misplaced tensor cannot hide."""
import functools
import json
import os
import re
import stat

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models._hub import save_for_hf

from vit_jax.models import hub_export
from vit_jax.models import hub_import
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
  """DeiT-III's config.json is the hub's older kind, without model_args: its heads come
  from the architecture name ('small' => 6)."""
  old_config = family == 'deit3'
  heads = 6 if old_config else 4
  ref = _timm(arch, seed=1, img_size=32, patch_size=8, num_classes=7, num_heads=heads)
  imported = hub_import.load(_save(ref, tmp_path, drop_model_args=old_config))
  assert imported.family == family and imported.num_classes == 7
  assert imported.source == str(tmp_path / 'model.safetensors')
  assert {k: imported.model[k] for k in layout} == layout
  assert imported.model['image_size'] == 32 and imported.model['num_heads'] == heads
  _check(ref, imported, _images(size=32))


@pytest.mark.parametrize('arch,family,layout', [
    ('vit_small_patch16_224', 'augreg', dict(pos_embed='all', layerscale_init=0.0)),
    ('vit_small_patch14_dinov2', 'dinov2',
     dict(pos_embed='all', layerscale_init=1e-5, patch_size=14, num_registers=0)),
    ('vit_small_patch14_reg4_dinov2', 'dinov2_reg',
     dict(pos_embed='patches', layerscale_init=1e-5, patch_size=14, num_registers=4)),
])
def test_augreg_and_dinov2_from_the_hub_layout(tmp_path, arch, family, layout):
  """DINOv2 is headless (timm's num_classes=0): the features are compared. timm's DINOv2 with
  registers is no_embed_class: the cls token's position embedding is folded into it
  (timm's _convert_dinov2), registers have none."""
  size = 28 if 'dinov2' in arch else 32
  kwargs = {} if 'dinov2' in arch else dict(patch_size=8, num_classes=7)
  ref = _timm(arch, seed=3, img_size=size, **kwargs)
  imported = hub_import.load(_save(ref, tmp_path))
  assert imported.family == family
  assert imported.num_classes == (0 if 'dinov2' in arch else 7)
  assert {k: imported.model[k] for k in layout} == layout
  _check(ref, imported, _images(size=size))


# --- position embeddings at another size ----------------------------------------------

@pytest.mark.parametrize('old,new,prefix', [(37, 16, 1), (14, 10, 0), (4, 6, 1), (7, 3, 2),
                                            (5, 5, 1)])
def test_resample_matches_timm(old, new, prefix):
  """timm's resample_abs_pos_embed (bicubic, antialias=True as its checkpoint_filter_fn
  passes it), shrinking and growing, with prefix tokens kept."""
  from timm.layers import resample_abs_pos_embed
  pos = np.random.default_rng(old).normal(size=(1, prefix + old * old, 24)).astype(np.float32)
  want = resample_abs_pos_embed(torch.from_numpy(pos), [new, new], num_prefix_tokens=prefix,
                                interpolation='bicubic', antialias=True).numpy()
  got = hub_import.resample_pos_embed(pos, new, prefix)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('arch,native,size,kwargs', [
    ('vit_small_patch14_dinov2', 518, 224, {}),                     # DINOv2's native 518
    ('deit3_small_patch16_224', 64, 40, dict(patch_size=8, num_classes=7)),   # shrink
    ('deit3_small_patch16_224', 32, 48, dict(patch_size=8, num_classes=7)),   # grow
])
def test_another_image_size_matches_timm_checkpoint_filter(tmp_path, arch, native, size,
                                                           kwargs):
  """hub_import.load(image_size=...) vs timm's model created at that size and loaded through its
  checkpoint_filter_fn (which resamples the position embeddings)."""
  from timm.models.vision_transformer import checkpoint_filter_fn
  ref = _timm(arch, seed=4, img_size=native, **kwargs)
  folder = _save(ref, tmp_path)
  imported = hub_import.load(folder, image_size=size)
  assert imported.model['image_size'] == native
  at_size = timm.create_model(arch, pretrained=False, img_size=size, **SMALL, **kwargs).eval()
  at_size.load_state_dict(checkpoint_filter_fn(ref.state_dict(), at_size), strict=True)
  _check(at_size, imported, _images(n=2, size=size))


# --- other formats and sources ------------------------------------------------------------

def _write_npz(path, model, naming):
  """A timm ViT as a .npz, written in the vision_transformer repository's AugReg naming
  ('augreg') or big_vision's ('big_vision': params/ prefix, its module indices)."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  d, heads = model.embed_dim, model.blocks[0].attn.num_heads
  p = 'params/' if naming == 'big_vision' else ''
  mha, mlp, ln2 = (0, 0, 1) if naming == 'big_vision' else (1, 3, 2)
  w = {f'{p}embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
       f'{p}embedding/bias': sd['patch_embed.proj.bias'], f'{p}cls': sd['cls_token'],
       f'{p}Transformer/encoder_norm/scale': sd['norm.weight'],
       f'{p}Transformer/encoder_norm/bias': sd['norm.bias'],
       f'{p}head/kernel': sd['head.weight'].T, f'{p}head/bias': sd['head.bias']}
  w[f'{p}pos_embedding' if naming == 'big_vision' else
    'Transformer/posembed_input/pos_embedding'] = sd['pos_embed']
  for i in range(len(model.blocks)):
    t, b = f'blocks.{i}.', f'{p}Transformer/encoderblock_{i}/'
    a = f'{b}MultiHeadDotProductAttention_{mha}/'
    w[f'{b}LayerNorm_0/scale'], w[f'{b}LayerNorm_0/bias'] = sd[t + 'norm1.weight'], sd[t + 'norm1.bias']
    w[f'{b}LayerNorm_{ln2}/scale'] = sd[t + 'norm2.weight']
    w[f'{b}LayerNorm_{ln2}/bias'] = sd[t + 'norm2.bias']
    for n, wq, bq in zip(('query', 'key', 'value'), np.split(sd[t + 'attn.qkv.weight'], 3),
                         np.split(sd[t + 'attn.qkv.bias'], 3)):
      w[f'{a}{n}/kernel'] = wq.T.reshape(d, heads, -1)
      w[f'{a}{n}/bias'] = bq.reshape(heads, -1)
    w[f'{a}out/kernel'] = sd[t + 'attn.proj.weight'].T.reshape(heads, -1, d)
    w[f'{a}out/bias'] = sd[t + 'attn.proj.bias']
    for r in (1, 2):
      w[f'{b}MlpBlock_{mlp}/Dense_{r - 1}/kernel'] = sd[t + f'mlp.fc{r}.weight'].T
      w[f'{b}MlpBlock_{mlp}/Dense_{r - 1}/bias'] = sd[t + f'mlp.fc{r}.bias']
  np.savez(path, **w)
  return str(path)


@pytest.mark.parametrize('naming', ['augreg', 'big_vision'])
def test_npz_matches_timm(tmp_path, naming):
  """The writer is checked by timm's own .npz loader (a second timm model gets the same
  tensors); then ours from the .npz vs timm. Heads come from the kernels' shapes."""
  from timm.models.vision_transformer import _load_weights
  kwargs = dict(img_size=32, patch_size=8, num_classes=7)
  ref = _timm('vit_small_patch16_224', seed=5, **kwargs)
  path = _write_npz(tmp_path / 'augreg.npz', ref, naming)
  twin = timm.create_model('vit_small_patch16_224', pretrained=False, **SMALL, **kwargs).eval()
  _load_weights(twin, path)
  for key, value in ref.state_dict().items():
    np.testing.assert_array_equal(twin.state_dict()[key].numpy(), value.numpy(), err_msg=key)
  imported = hub_import.load(path)
  assert imported.family == 'augreg' and imported.model['num_heads'] == 4
  _check(ref, imported, _images(size=32))


def test_pytorch_model_bin(tmp_path, monkeypatch):
  ref = _timm('deit3_small_patch16_224', seed=6, img_size=32, patch_size=8, num_classes=7)
  save_for_hf(ref, str(tmp_path), safe_serialization=False)
  assert not (tmp_path / 'model.safetensors').exists()
  imported = hub_import.load(str(tmp_path))
  assert imported.source == str(tmp_path / 'pytorch_model.bin')
  _check(ref, imported, _images(size=32))
  import sys
  monkeypatch.setitem(sys.modules, 'torch', None)     # as if torch were not installed
  with pytest.raises(ValueError, match=r'pytorch_model.bin is a torch pickle and torch is not '
                                       r'installed'):
    hub_import.load(str(tmp_path))


def test_hf_hub_from_the_local_cache(tmp_path, monkeypatch):
  """hf-hub:ORG/NAME resolves offline in a cache laid out as huggingface_hub lays it out."""
  ref = _timm('vit_small_patch14_reg4_dinov2', seed=7, img_size=28)
  commit = 'a' * 40
  repo = tmp_path / 'hub' / 'models--timm--vit_small_patch14_reg4_dinov2.lvd142m'
  _save(ref, repo / 'snapshots' / commit)
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text(commit)
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
  imported = hub_import.load('hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m')
  assert imported.source == str(repo / 'snapshots' / commit / 'model.safetensors')
  assert imported.family == 'dinov2_reg'
  _check(ref, imported, _images(n=2, size=28))
  with pytest.raises(FileNotFoundError, match=r'hf-hub:timm/deit3_small_patch16_224.fb_in1k has '
                                              r'no model.safetensors or pytorch_model.bin in the '
                                              r'Hugging Face cache .*hub .*cannot download'):
    hub_import.load('hf-hub:timm/deit3_small_patch16_224.fb_in1k')


# --- refusals, each in one line --------------------------------------------------------

def _one_line(excinfo):
  assert '\n' not in str(excinfo.value)
  return str(excinfo.value)


def test_refusals_name_the_first_misfit(tmp_path):
  convnext = timm.create_model('convnext_atto', pretrained=False, num_classes=7)
  # safetensors keeps names sorted: head.fc.bias is the file's first tensor.
  with pytest.raises(ValueError, match=r"tensor 'head.fc.bias' \(7,\) does not fit "
                                       r"the project's ViT") as e:
    hub_import.load(_save(convnext, tmp_path / 'convnext'))
  _one_line(e)
  qk_norm = _timm('vit_small_patch16_224', seed=8, img_size=32, patch_size=8, qk_norm=True)
  with pytest.raises(ValueError, match=r"tensor 'blocks.0.attn.k_norm.bias' \(12,\)") as e:
    hub_import.load(_save(qk_norm, tmp_path / 'qk_norm'))
  _one_line(e)
  # A tensor of the right name and the wrong shape.
  ref = _timm('deit3_small_patch16_224', seed=9, img_size=32, patch_size=8, num_classes=7)
  folder = _save(ref, tmp_path / 'bad_shape')
  from safetensors.numpy import load_file, save_file
  state = load_file(os.path.join(folder, 'model.safetensors'))
  state['blocks.1.mlp.fc1.bias'] = state['blocks.1.mlp.fc1.bias'][:100]
  save_file(state, os.path.join(folder, 'model.safetensors'))
  with pytest.raises(ValueError, match=r'blocks.1.mlp.fc1.bias of shape \(100,\) does not fit '
                                       r'parameter block_1/mlp/fc1/bias of shape \(192,\)') as e:
    hub_import.load(folder)
  _one_line(e)
  # An architecture this loader does not map, though its tensors have ViT names.
  with open(os.path.join(folder, 'config.json')) as f:
    cfg = json.load(f)
  cfg['architecture'] = 'vit_base_patch16_clip_224'
  save_file(load_file(os.path.join(folder, 'model.safetensors')) | {
      'blocks.1.mlp.fc1.bias': np.zeros(192, np.float32)}, os.path.join(folder, 'model.safetensors'))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"architecture 'vit_base_patch16_clip_224' is not one "
                                       r"this loader maps") as e:
    hub_import.load(folder)
  _one_line(e)
  os.remove(os.path.join(folder, 'config.json'))
  with pytest.raises(ValueError, match=r'no config.json naming the architecture beside it') as e:
    hub_import.load(os.path.join(folder, 'model.safetensors'))
  _one_line(e)
  with pytest.raises(FileNotFoundError, match=r"checkpoint '/nowhere/model.safetensors' does "
                                              r"not exist") as e:
    hub_import.load('/nowhere/model.safetensors')
  _one_line(e)
  with pytest.raises(FileNotFoundError, match=r'holds none of') as e:
    hub_import.load(str(tmp_path))
  _one_line(e)
  # The .npz names its first array without a place (here the old ViT's pre-logits layer).
  vit_ref = _timm('vit_small_patch16_224', seed=13, img_size=32, patch_size=8, num_classes=7)
  path = _write_npz(tmp_path / 'augreg.npz', vit_ref, 'augreg')
  with np.load(path) as f:
    arrays = dict(f)
  np.savez(path, **arrays, **{'pre_logits/kernel': np.zeros((48, 48), np.float32)})
  with pytest.raises(ValueError, match=r"the .npz array 'pre_logits/kernel' \(48, 48\) has no "
                                       r"place") as e:
    hub_import.load(path)
  _one_line(e)


# --- export ----------------------------------------------------------------------------------

def _random_params(model, seed):
  """Our init, then made non-uniform like refutil.randomize_ (peaked attention)."""
  import flax
  from vit_jax import models
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(models.abstract_params(model), sep='/')
  out = {}
  for path, leaf in flat.items():
    r = rng.normal(size=leaf.shape).astype(np.float32)
    if path.endswith('kernel'):
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[path] = r * (2.5 if 'qkv' in path else 1.0) / fan_in ** 0.5
    elif 'norm' in path and path.endswith('scale'):
      out[path] = 1.0 + 0.2 * r
    elif path.startswith('block') and '/ls_' in path:
      out[path] = 0.5 + 0.2 * r
    else:
      out[path] = 0.3 * r
  return flax.traverse_util.unflatten_dict(out, sep='/')


# What an export's pretrained_cfg carries (export.py: the workdir's evaluation).
PREPROCESSING = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9,
                     interpolation='bicubic')
SMALL_VIT = dict(image_size=32, patch_size=8, width=48, depth=2, num_heads=4, mlp_ratio=2.0,
                 qkv_bias=True, num_registers=0, distillation=False, head='linear',
                 layer_norm_eps=1e-6, gate='none', svd_tap_layers=())


def _data_config(model) -> dict:
  """timm's resolve_data_config for the model (config.json's lists as tuples)."""
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in resolve_data_config({}, model=model).items()}


@pytest.mark.parametrize('fields,num_classes,family', [
    (dict(layerscale_init=1e-6, pos_embed='patches', num_registers=4), 7, 'deit3'),  # + regs
    (dict(layerscale_init=0.0, pos_embed='all', distillation=True), 5, 'deit_distilled'),
    (dict(layerscale_init=1e-5, pos_embed='all', patch_size=14, image_size=28), 0, 'dinov2'),
    (dict(layerscale_init=1e-5, pos_embed='patches', num_registers=4, patch_size=14,
          image_size=28), 3, 'dinov2_reg'),
    (dict(layerscale_init=0.0, pos_embed='all'), 4, 'deit'),
])
def test_export_loads_in_timm(tmp_path, fields, num_classes, family):
  """export_timm's folder, read by timm itself (create_model('local-dir:...', pretrained=True)
  takes the architecture and model_args from config.json and the weights strictly), gives
  the logits of the project's ViT; and hub_import.load reads it back to the same params, as the
  family whose layout it has."""
  m = {**SMALL_VIT, **fields}
  model = vit.ViT(num_classes=num_classes, **m)
  params = _random_params(model, seed=10)
  out = hub_export.export_timm(params, m, num_classes, str(tmp_path / 'exported'),
                        preprocessing=PREPROCESSING)
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  assert os.listdir(tmp_path) == ['exported']          # no temporary folder left behind
  ref = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
  imported = hub_import.load(out)
  assert imported.num_classes == num_classes and imported.family == family
  assert imported.preprocessing == PREPROCESSING
  size = m['image_size']
  assert _data_config(ref) == dict(input_size=(3, size, size), crop_mode='center',
                                   **PREPROCESSING)
  for key in ('width', 'depth', 'num_heads', 'patch_size', 'pos_embed', 'num_registers',
              'distillation', 'image_size'):
    assert imported.model[key] == m[key], key
  _check(ref, hub_import.Imported(m, num_classes, params, out, 'vit_jax'), _images(n=2, size=m['image_size']))
  np.testing.assert_array_equal(imported.params['pos_embedding'], params['pos_embedding'])


def test_export_refusals(tmp_path):
  m = dict(image_size=32, patch_size=8, width=48, depth=2, num_heads=4, mlp_ratio=2.0,
           layerscale_init=1e-6, pos_embed='patches')
  params = _random_params(vit.ViT(num_classes=3, **m), seed=11)
  export = functools.partial(hub_export.export_timm, preprocessing=PREPROCESSING)
  for field, match in ((dict(gate='g2'), r"model.gate='g2' cannot be exported to timm; it "
                                         r"accepts 'none' \(G2 gates the values"),
                       (dict(gate='g1'), r"model.gate='g1' cannot be exported.*attn_layer"),
                       (dict(head='mlp'), r"model.head='mlp' cannot be exported"),
                       (dict(svd_tap_layers=(1,)), r'model.svd_tap_layers=\(1,\) cannot')):
    with pytest.raises(ValueError, match=match) as e:
      export(params, {**m, **field}, 3, str(tmp_path / 'x'))
    _one_line(e)
  with pytest.raises(ValueError, match=r'params do not fit model_config: blocks.0.mlp.fc1.bias '
                                       r'is \(96,\), the model has \(192,\)'):
    export(params, {**m, 'mlp_ratio': 4.0}, 3, str(tmp_path / 'x'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError, match=r'full exists and is not empty'):
    export(params, m, 3, str(tmp_path / 'full'))
  assert (tmp_path / 'full' / 'keep.txt').read_text() == 'mine'
  assert sorted(os.listdir(tmp_path)) == ['full']


def test_export_cli_from_a_workdir(tmp_path, capsys):
  """python -m vit_jax.export on a workdir laid out as training leaves it (config.json, an
  orbax checkpoints/<step>/state with the epoch in its metrics): timm's local-dir loader
  gives our logits; a variant timm cannot express is one error line, exit 2, and nothing
  is written."""
  import orbax.checkpoint as ocp
  from vit_jax import config_lib
  from vit_jax import export
  config = config_lib.load('register', 'quick')       # LayerScale, 4 registers, patches
  config.model.update(depth=2, width=48)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  model = vit.ViT(num_classes=config.dataset.num_classes, **config.model)
  params = _random_params(model, seed=12)
  step = workdir / 'checkpoints' / '60'        # epoch 3's checkpoint: 20 updates an epoch
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(step / 'state'), {'params': params})
    ckptr.wait_until_finished()
  (step / 'metrics').mkdir()                     # as orbax writes an epoch's metrics
  (step / 'metrics' / 'metrics').write_text(json.dumps({'epoch': 3, 'val_acc1': 50.0}))
  export.main(['--workdir', str(workdir), '--out', str(tmp_path / 'out'), '--checkpoint', '3'])
  ref = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
  size = config.model.image_size
  _check(ref, hub_import.Imported(dict(config.model), config.dataset.num_classes, params, '', ''),
         _images(n=2, size=size))
  cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert cfg['pretrained_cfg']['mean'] == list(config.dataset.mean)
  assert cfg['pretrained_cfg']['crop_pct'] == 1.0       # digits: evaluated as they are
  assert cfg['architecture'] == 'deit3_small_patch16_224'   # the registers model's layout
  config.model.gate = 'g2'
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    export.main(['--workdir', str(workdir), '--out', str(tmp_path / 'out2')])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: model.gate='g2' cannot be exported to timm") and err.count('\n') == 1
  assert not (tmp_path / 'out2').exists()


def test_export_names_the_timm_architecture_of_its_family_width_patch_and_size():
  """timm builds an export only by a registered name (model_args then set every field):
  hub_export's table is every registered name of the families it writes, and an export takes the
  one that matches its width, patch and resolution where timm has it."""
  registered = {n for n in timm.list_models()
                if re.fullmatch(r'deit3?_\w+_patch\d+_\d+|vit_\w+_dinov2', n)}
  assert set(hub_export.TIMM_NAMES) == registered
  s16 = dict(width=384, patch_size=16, image_size=224, layerscale_init=1e-6, pos_embed='patches')
  for fields, name in (
      (s16, 'deit3_small_patch16_224'), ({**s16, 'image_size': 384}, 'deit3_small_patch16_384'),
      ({**s16, 'num_registers': 4}, 'deit3_small_patch16_224'),
      ({**s16, 'layerscale_init': 0.0, 'pos_embed': 'all', 'distillation': True},
       'deit_small_distilled_patch16_224'),
      ({**s16, 'width': 768, 'image_size': 384, 'layerscale_init': 0.0, 'pos_embed': 'all'},
       'deit_base_patch16_384'),
      ({**s16, 'patch_size': 14, 'image_size': 518, 'layerscale_init': 1e-5, 'pos_embed': 'all'},
       'vit_small_patch14_dinov2'),
      ({**s16, 'patch_size': 14, 'image_size': 518, 'layerscale_init': 1e-5, 'num_registers': 4},
       'vit_small_patch14_reg4_dinov2'),
      ({**s16, 'width': 64, 'patch_size': 4, 'image_size': 16}, 'deit3_small_patch16_224')):
    assert hub_export.timm_architecture(fields) == name, fields
  # A field left out is the ViT's default, as models.build_model builds the model: LayerScale
  # 1e-4, with position embeddings on every token DINOv2's layout (not DeiT's).
  assert hub_export.export_family({'pos_embed': 'all', 'patch_size': 16}) == 'dinov2'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_export_files_have_the_modes_the_umask_gives(tmp_path, umask):
  """As any new file: 0644 / 0755 under umask 022 (safetensors alone would write 0600)."""
  m = {**SMALL_VIT, 'layerscale_init': 1e-6, 'pos_embed': 'patches'}
  params = _random_params(vit.ViT(num_classes=3, **m), seed=13)
  old = os.umask(umask)
  try:
    out = hub_export.export_timm(params, m, 3, str(tmp_path / 'exported'), preprocessing=PREPROCESSING)
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  assert mode(out) == 0o777 & ~umask
  for name in ('config.json', 'model.safetensors'):
    assert mode(os.path.join(out, name)) == 0o666 & ~umask, name


def _digit_tree(root, per_class=(150, 12)):
  """An ImageFolder tree of the digits, each image resized to its own size between 17 and
  31 pixels a side (non-square), so evaluation's resize and crop change every image."""
  from vit_jax.data import sources
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'val'), per_class):
    data = sources.digits(split, 16)
    for label in range(10):
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder)
      for i in np.flatnonzero(data.labels == label)[:n]:
        size = tuple(int(v) for v in rng.integers(17, 32, 2))
        Image.fromarray(data.images[i]).resize(size, Image.BICUBIC).save(
            os.path.join(folder, f'{i:04d}.png'))
  return str(root)


def _image_files(folder, source):
  """The validation images as files, in the order of the split: PNGs of the digits, or the
  folder tree's own files."""
  if hasattr(source, 'samples'):
    return [p for p, _ in source.samples], source.labels
  os.makedirs(folder)
  paths = [os.path.join(folder, f'{i:04d}.png') for i in range(len(source))]
  for i, path in enumerate(paths):
    Image.fromarray(source.images[i]).save(path)
  return paths, source.labels


@pytest.mark.parametrize('data,crop_pct,trained', [('digits', 1.0, 50), ('folder', 0.8, 20)])
def test_an_exported_workdir_scores_in_timm_as_in_our_evaluation(tmp_path, data, crop_pct,
                                                                 trained):
  """Train a quick workdir (digits at their own 16 px; or an image folder of them at other
  sizes, evaluated at crop 0.8), evaluate it (trainer=evaluate), export it, and run the
  export as timm runs a hub checkpoint: create_model('local-dir:'), then
  resolve_data_config + create_transform on the validation image files. The same top-1,
  and logits within 1e-4. (Chance is 10%: `trained` says the predictions follow pixels.)"""
  from vit_jax import config_lib
  from vit_jax import export
  from vit_jax.data import sources
  from vit_jax.train import evaluate
  from vit_jax.train import loop
  c = config_lib.load('vanilla', 'quick')
  c.update_from_flattened_dict({'total_epochs': 12, 'optim.warmup_epochs': 0.0,
                                'optim.schedule_epoch_lag': 0})
  if data == 'folder':
    c.update_from_flattened_dict({'dataset.name': 'imagenet100', 'dataset.eval_crop_ratio': 0.8,
                                  'dataset.data_dir': _digit_tree(tmp_path / 'tree')})
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(c, str(workdir))
  c.trainer = 'evaluate'
  ours = evaluate.evaluate(c, str(workdir))
  logits = np.load(workdir / f'evaluate_val_{ours["epoch"]}_raw.npz')['logits']
  out = export.export(str(workdir), str(tmp_path / 'exported'))
  model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
  data_config = _data_config(model)
  assert data_config == dict(input_size=(3, 16, 16), interpolation='bicubic',
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=crop_pct,
                             crop_mode='center')
  transform = create_transform(**data_config)
  paths, labels = _image_files(str(tmp_path / 'images'), sources.get(c.dataset, 'val'))
  with torch.no_grad():
    theirs = model(torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])).numpy()
  assert ours['acc1'] > trained
  assert 100.0 * np.mean(theirs.argmax(-1) == labels) == ours['acc1']
  np.testing.assert_allclose(theirs, logits, atol=1e-4, rtol=0)
