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
