"""The timm side of `python -m vit_jax.bench model`: the same ViT shapes trained in PyTorch.

Only imported when torch and timm are installed (the `bench` extra). Each
runner is one full train step (forward, loss, backward, clip to norm 1.0,
AdamW), eager or under torch.compile, float32 or bf16 autocast. Variants
without a timm model (the gated ones, SVD taps) return None.
"""
import os
import time

import torch
import torch.nn.functional as F

TIMM_VARIANTS = ('vanilla', 'register', 'distill')


def _vit(variant: str, image_size: int, patch_size: int, num_classes: int):
  from timm.models.deit import VisionTransformerDistilled
  from timm.models.vision_transformer import VisionTransformer
  kw = dict(img_size=image_size, patch_size=patch_size, num_classes=num_classes, embed_dim=384,
            depth=12, num_heads=6, init_values=1e-4)
  if variant == 'distill':   # original DeiT: position embeddings on cls and dist too
    model = VisionTransformerDistilled(**kw)
    model.set_distilled_training(True)
    return model
  return VisionTransformer(no_embed_class=True, reg_tokens=4 if variant == 'register' else 0,
                           **kw)


def _teacher(image_size: int, num_classes: int):
  """ResNet-50; at 32x32 with the JAX teacher's 'small' stem (3x3/1 conv, no max-pool)."""
  import timm
  model = timm.create_model('resnet50', num_classes=num_classes)
  if image_size < 64:
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  return model.eval()


def device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def runner(variant: str, image_size: int, patch_size: int, batch: int, dtype: str,
           compile_model: bool, num_classes: int = 100):
  """A zero-argument function that runs one train step and waits for it, or None."""
  if variant not in TIMM_VARIANTS:
    return None
  torch.set_num_threads(os.cpu_count())
  dev = device()
  torch.manual_seed(0)
  model = _vit(variant, image_size, patch_size, num_classes).to(dev).train()
  teacher = _teacher(image_size, num_classes).to(dev) if variant == 'distill' else None
  opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
  forward = torch.compile(model) if compile_model else model
  x = torch.randn(batch, 3, image_size, image_size, device=dev)
  y = torch.randint(0, num_classes, (batch,), device=dev)
  bf16 = dtype == 'bfloat16'

  def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      if teacher is None:
        loss = F.cross_entropy(forward(x), y)
      else:
        with torch.no_grad():
          hard = teacher(x).argmax(-1)
        cls_out, dist_out = forward(x)
        loss = 0.5 * F.cross_entropy(cls_out, y) + 0.5 * F.cross_entropy(dist_out, hard)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if dev.type == 'cuda':
      torch.cuda.synchronize()
    return loss.detach()

  return step


def compile_seconds(step) -> float:
  """Time of the first call (torch.compile's tracing and code generation happen here)."""
  t0 = time.perf_counter()
  step()
  return time.perf_counter() - t0


def peak_memory_bytes():
  """Peak bytes on the GPU since the last reset; None on CPU (torch does not track it there)."""
  if not torch.cuda.is_available():
    return None
  peak = torch.cuda.max_memory_allocated()
  torch.cuda.reset_peak_memory_stats()
  return peak


def fmnist_runner(c):
  """One train step of timm's VisionTransformer of `c.model`'s shape with the :fmnist
  recipe's per-batch part: timm's Mixup / CutMix, BCE on targets binarised at
  loss.bce_target_threshold (DeiT-III's engine.py), timm's LAMB (its parameter groups,
  its clipping at 1.0), stochastic depth and LayerScale; eager, float32. The per-image
  PIL transforms live in timm's data loader and are not part of its step."""
  import timm.data
  import timm.optim
  from timm.models.vision_transformer import VisionTransformer
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  m, a = c.model, c.augment
  model = VisionTransformer(
      img_size=m.image_size, patch_size=m.patch_size, num_classes=c.dataset.num_classes,
      embed_dim=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      qkv_bias=m.qkv_bias, init_values=m.layerscale_init or None, no_embed_class=True,
      drop_path_rate=m.drop_path_rate).train()
  opt = timm.optim.create_optimizer_v2(model, opt='lamb', lr=c.optim.lr,
                                       weight_decay=c.optim.weight_decay)
  mix = timm.data.Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix,
                        switch_prob=a.mix_switch_prob, num_classes=c.dataset.num_classes)
  bce = torch.nn.BCEWithLogitsLoss()
  x = torch.randn(c.batch_size, 3, m.image_size, m.image_size)
  y = torch.randint(0, c.dataset.num_classes, (c.batch_size,))

  def step():
    xm, target = mix(x.clone(), y)
    loss = bce(model(xm), target.gt(c.loss.bce_target_threshold).float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return step
