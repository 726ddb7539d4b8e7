"""Model construction from a config; the only place that maps config -> module."""
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.models.resnet import ResNet
from vit_jax.models.vit import ViT

ARCHS = {'vit': ViT, 'resnet': ResNet}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int,
                dtype: str = 'float32'):
  """config.model -> a ViT or ResNet; `arch` picks which, the other fields are its fields."""
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not one of {tuple(DTYPES)}')
  kwargs = dict(model_cfg)
  arch = kwargs.pop('arch', 'vit')
  if arch not in ARCHS:
    raise ValueError(f'model.arch={arch!r} is not one of {tuple(ARCHS)}')
  for key, value in kwargs.items():
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  model = ARCHS[arch](num_classes=num_classes, dtype=DTYPES[dtype], **kwargs)
  if arch == 'vit':
    model._check()
  return model


def check(config) -> None:
  """config.model and dtype build a model for the data set's images; with init.source, the
  checkpoint's architecture is written into config.model and must fill every parameter."""
  from vit_jax.models import pretrained   # it reads checkpoints: imported only when asked
  if config.model.image_size != config.dataset.image_size:
    raise ValueError(f'model.image_size={config.model.image_size} differs from '
                     f'dataset.image_size={config.dataset.image_size}')
  imported = pretrained.load(config)
  model = build_model(config.model, config.dataset.num_classes, config.dtype)
  if imported is not None:
    pretrained.check_fits(config, imported, abstract_params(model))


def abstract_params(model):
  """Parameter shapes and dtypes, without computing anything."""
  images = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, images))['params']


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def init_params(model, rng, batch_size: int = 2):
  """Parameters only (float32); shapes come from an abstract trace, no FLOPs wasted."""
  images = jnp.zeros((batch_size, model.image_size, model.image_size, 3), jnp.float32)
  return jax.jit(lambda r: model.init({'params': r}, images)['params'])(rng)
