"""Model construction from a config; the only place that maps config -> module."""
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.models.vit import ViT

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int,
                dtype: str = 'float32') -> ViT:
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not one of {tuple(DTYPES)}')
  kwargs = dict(model_cfg)
  kwargs['svd_tap_layers'] = tuple(kwargs.get('svd_tap_layers', ()))
  model = ViT(num_classes=num_classes, dtype=DTYPES[dtype], **kwargs)
  model._check()
  return model


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def init_params(model: ViT, rng, batch_size: int = 2):
  """Parameters only (float32); shapes come from an abstract trace, no FLOPs wasted."""
  images = jnp.zeros((batch_size, model.image_size, model.image_size, 3), jnp.float32)
  return jax.jit(lambda r: model.init({'params': r}, images)['params'])(rng)
