"""Optimizers and schedules against timm and torch, in float64, on identical parameters
and gradients: LAMB with timm's create_optimizer_v2 parameter groups (DeiT-III), AdamW
with them (DeiT) and over every parameter with clipping (seed 000), 5 steps each, within
1e-10 relative; the learning rate of every update against timm's CosineLRScheduler and
torch's CosineAnnealingLR stepped as the sources' training loops step them."""
import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from vit_jax import config_lib
from vit_jax import models
from vit_jax.models import convert
from vit_jax.models import vit
from vit_jax.train import optim
from refutil import Seed000, randomize_

STEPS = 5
LR = 0.01
SHAPE = dict(image_size=32, patch_size=8, width=48, depth=2, num_heads=4, mlp_ratio=2.0)


def _timm_vit():
  torch.manual_seed(0)
  model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4,
                            mlp_ratio=2.0, num_classes=7, init_values=1e-4, no_embed_class=True,
                            reg_tokens=4)
  randomize_(model, seed=1)
  return model.double(), vit.ViT(num_classes=7, **SHAPE, layerscale_init=1e-4,
                                 pos_embed='patches', num_registers=4)


def _seed000():
  torch.manual_seed(0)
  model = Seed000(7, 32, 8, 48, 2, 4, 2.0, taps=(1, 2), rank=4)
  randomize_(model, seed=2)
  return model.double(), vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='all',
                                 head='mlp', layer_norm_eps=1e-5, svd_tap_layers=(1, 2),
                                 svd_rank=4, init_scheme='seed000')


def _run_both(torch_model, model, torch_opt, tx, layout, grad_scale, clip_torch=None,
              no_grad=()):
  """STEPS steps of each on the same gradients (none for the `no_grad` tensors, as a
  detached branch leaves them in torch); returns both final params in our layout."""
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    params = convert.from_torch(torch_model.state_dict(), model, layout, dtype=np.float64)
    state = tx.init(params)
    for _ in range(STEPS):
      grads = {n: rng.normal(size=p.shape) * grad_scale
               for n, p in torch_model.named_parameters()}
      for n, p in torch_model.named_parameters():
        p.grad = None if n in no_grad else torch.from_numpy(grads[n])
      if clip_torch:
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), clip_torch)
      torch_opt.step()
      ours = {n: (np.zeros_like(g) if n in no_grad else g) for n, g in grads.items()}
      g = convert.from_torch(ours, model, layout, dtype=np.float64)
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
    want = convert.from_torch(torch_model.state_dict(), model, layout, dtype=np.float64)
    return jax.device_get(params), want


def _cfg(name, **kw):
  return ml_collections.ConfigDict(dict(name=name, b1=0.9, b2=0.999, eps=1e-8,
                                        weight_decay=0.05, no_decay_params=optim.TOKEN_PARAMS)
                                   | kw)


@pytest.mark.parametrize('grad_scale', [0.01, 10.0])   # below and above LAMB's clip at 1.0
def test_lamb_with_timm_parameter_groups(grad_scale):
  torch_model, model = _timm_vit()
  torch_opt = create_optimizer_v2(torch_model, opt='lamb', lr=LR, weight_decay=0.05, eps=1e-8)
  decay = {id(p) for g in torch_opt.param_groups if g['weight_decay'] for p in g['params']}
  assert 0 < len(decay) < len(list(torch_model.parameters()))
  tx = optim.build(_cfg('lamb', clip_grad_norm=1.0, decay_scope='matrices'), LR)
  got, want = _run_both(torch_model, model, torch_opt, tx, 'timm', grad_scale)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)


def test_adamw_with_timm_parameter_groups():
  """DeiT: create_optimizer(args) with adamw, no clipping."""
  torch_model, model = _timm_vit()
  torch_opt = create_optimizer_v2(torch_model, opt='adamw', lr=LR, weight_decay=0.05, eps=1e-8)
  tx = optim.build(_cfg('adamw', clip_grad_norm=0.0, decay_scope='matrices'), LR)
  got, want = _run_both(torch_model, model, torch_opt, tx, 'timm', 0.1)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)


# DeiT's VisionTransformerDistilled (models.py) does not override no_weight_decay(), so it has
# the one of the VisionTransformer of the timm it pins (0.3.2): {'pos_embed', 'cls_token'}.
DEIT_NO_WEIGHT_DECAY = {'pos_embed', 'cls_token'}


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep='/')


def _timm_032_decayed(model, skip_list) -> set:
  """Names of the parameters timm 0.3.2's optimizer factory decays (create_optimizer with
  a weight decay: optim_factory.add_weight_decay): each trainable one that is not 1-D, not
  a '.bias' and not in the model's no_weight_decay() (exact names)."""
  return {name for name, p in model.named_parameters() if p.requires_grad and
          not (p.ndim == 1 or name.endswith('.bias') or name in skip_list)}


def test_deit_distill_decays_what_deits_timm_032_decays():
  """DeiT's main.py: create_optimizer(args, model) with --weight-decay 0.05 on the distilled
  model. timm 1.0's grouping exempts dist_token, 0.3.2's decays it: the groups are rebuilt as
  0.3.2 made them, and AdamW over them runs 5 steps beside ours (configs/deit_distill.py)."""
  torch.manual_seed(0)
  torch_model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                           num_heads=4, mlp_ratio=2.0, num_classes=7)
  randomize_(torch_model, seed=4)
  torch_model = torch_model.double()
  model = vit.ViT(num_classes=7, **SHAPE, layerscale_init=0.0, pos_embed='all',
                  distillation=True)
  cfg = config_lib.load('deit_distill').optim
  decayed = _timm_032_decayed(torch_model, DEIT_NO_WEIGHT_DECAY)
  assert 'dist_token' in decayed and 'cls_token' not in decayed
  marks = {n: np.full(p.shape, float(n in decayed)) for n, p in torch_model.named_parameters()}
  theirs = {k for k, v in _flat(convert.from_torch(marks, model, 'timm')).items() if v.all()}
  ours = {k for k, v in _flat(optim.mask_fn(cfg)(models.abstract_params(model))).items() if v}
  assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))
  params = dict(torch_model.named_parameters())
  torch_opt = torch.optim.AdamW(
      [{'params': [p for n, p in params.items() if n not in decayed], 'weight_decay': 0.0},
       {'params': [params[n] for n in sorted(decayed)], 'weight_decay': cfg.weight_decay}],
      lr=LR, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
  got, want = _run_both(torch_model, model, torch_opt, optim.build(cfg, LR), 'timm', 0.1)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)


def test_adamw_over_every_parameter_with_clipping_as_seed_000():
  """torch.optim.AdamW(model.parameters(), 3e-4, weight_decay=0.05) after
  clip_grad_norm_(1.0); the SVD tap projections get no gradient, so torch skips them."""
  torch_model, model = _seed000()
  torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=LR, weight_decay=0.05)
  tx = optim.build(_cfg('adamw', clip_grad_norm=1.0, decay_scope='all'), LR)
  no_grad = {'svd_projs.0.weight', 'svd_projs.1.weight'}
  got, want = _run_both(torch_model, model, torch_opt, tx, 'seed000', 1.0, clip_torch=1.0,
                        no_grad=no_grad)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)
  # Neither moves the projections: they keep their initial values exactly.
  before = convert.from_torch(_seed000()[0].state_dict(), model, 'seed000', dtype=np.float64)
  np.testing.assert_array_equal(got['svd_proj_0']['kernel'], before['svd_proj_0']['kernel'])


# --- schedules ------------------------------------------------------------------------------

EPOCHS, SPE = 12, 3


def _torch_opt(lr):
  return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _ours(cfg, batch=512):
  fn = optim.schedule(cfg, batch, SPE, EPOCHS)
  return np.array([float(fn(jnp.int32(s))) for s in range(EPOCHS * SPE)])


def _optim_cfg(**kw):
  base = dict(lr=1e-3, lr_scaling='none', warmup_epochs=3.0, warmup_lr=1e-6, min_lr=1e-5,
              schedule_unit='epoch', schedule_epoch_lag=0)
  return ml_collections.ConfigDict(base | kw)


def test_schedule_equals_deits_loop_over_timm_cosine():
  """DeiT's main.py: lr_scheduler = CosineLRScheduler(t_initial=epochs, warmup_t=5, ...,
  t_in_epochs=True); each epoch trains, then calls lr_scheduler.step(epoch)."""
  for c in (config_lib.load('vanilla'), config_lib.load('deit_distill')):
    opt = _torch_opt(c.optim.lr)            # at batch 512 DeiT's scaling is x1
    sched = CosineLRScheduler(opt, t_initial=EPOCHS, lr_min=c.optim.min_lr,
                              warmup_lr_init=c.optim.warmup_lr, warmup_t=c.optim.warmup_epochs,
                              t_in_epochs=True)
    want = []
    for epoch in range(EPOCHS):
      want += [opt.param_groups[0]['lr']] * SPE
      sched.step(epoch)
    np.testing.assert_allclose(_ours(c.optim), want, rtol=1e-6, atol=1e-10)


def test_schedule_per_update_equals_timm_step_update():
  """timm's train.py with t_in_epochs=False: update k uses the lr of t = k."""
  cfg = _optim_cfg(schedule_unit='step', warmup_epochs=1.5)
  opt = _torch_opt(cfg.lr)
  sched = CosineLRScheduler(opt, t_initial=EPOCHS * SPE, lr_min=cfg.min_lr,
                            warmup_lr_init=cfg.warmup_lr, warmup_t=1.5 * SPE, t_in_epochs=False)
  want = []
  for update in range(EPOCHS * SPE):
    want.append(opt.param_groups[0]['lr'])
    sched.step_update(num_updates=update + 1)
  np.testing.assert_allclose(_ours(cfg), want, rtol=1e-6, atol=1e-10)   # float32


@pytest.mark.filterwarnings('ignore:Detected call of `lr_scheduler.step()` before')
def test_schedule_equals_seed000s_cosine_annealing():
  c = config_lib.load('deit_cifar100')
  opt = _torch_opt(c.optim.lr)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
  want = []
  for _ in range(EPOCHS):
    want += [opt.param_groups[0]['lr']] * SPE
    sched.step()
  np.testing.assert_allclose(_ours(c.optim), want, rtol=1e-6, atol=1e-10)


def test_lr_scaling_is_deits():
  """DeiT main.py: lr = args.lr * batch_size * world_size / 512."""
  assert optim.scaled_lr(config_lib.load('deit_distill').optim, 1024) == pytest.approx(1e-3)
  assert optim.scaled_lr(config_lib.load('vanilla').optim, 1024) == pytest.approx(1e-3)


@pytest.mark.parametrize('warmup', [False, True])
def test_ema_against_timm_model_ema_v3(warmup):
  """Our EMA update after each of 12 optimizer updates against timm's ModelEmaV3 on the same
  sequence of weights, float32, within 1e-6: warmup=True as timm's train.py calls it
  (update(model, step=num_updates), use_warmup=True), warmup=False as DeiT's constant decay
  (update(model) without a step). decay 0.9 and warmup_power 2/3 make every step count."""
  from timm.utils.model_ema import ModelEmaV3
  from vit_jax.train import steps
  cfg = ml_collections.ConfigDict(dict(decay=0.9, warmup=warmup, warmup_gamma=1.0,
                                       warmup_power=2 / 3))
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
  ema_ref = ModelEmaV3(net, decay=cfg.decay, use_warmup=warmup, warmup_gamma=cfg.warmup_gamma,
                       warmup_power=cfg.warmup_power)
  ema = {n: jnp.asarray(p.detach().numpy()) for n, p in net.named_parameters()}
  rng = np.random.default_rng(0)
  for update in range(1, 13):
    with torch.no_grad():   # the weights after this update: large, varying moves
      for p in net.parameters():
        p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32) * update))
    ema_ref.update(net, step=update) if warmup else ema_ref.update(net)
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in net.named_parameters()}
    ema = steps.ema_update(ema, params, steps.ema_decay(cfg, update))
    want = dict(ema_ref.module.named_parameters())
    for n in ema:
      np.testing.assert_allclose(np.asarray(ema[n]), want[n].detach().numpy(), rtol=1e-6,
                                 atol=1e-6, err_msg=f'{n} after update {update}')
