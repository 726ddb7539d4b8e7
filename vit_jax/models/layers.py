"""The ViT's parts that are not attention: the initialisers where the sources differ,
stochastic depth, LayerScale, and the layout of its token sequence."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ('deit', 'seed000')

# torch's trunc_normal_(std=0.02) cuts at +-2 absolute, i.e. +-100 standard
# deviations: in effect a normal of std 0.02 (Flax's default cut, +-2 std,
# would give std 0.0176). DeiT, DeiT-III and seed 000 initialise every Linear so.
dense_init = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def initializers(name: str, patch_fan_in: int) -> dict:
  """Initialisers of the parameters whose init differs between the sources.

  'deit': the DeiT / DeiT-III code: cls, dist and position embeddings
  trunc_normal(0.02); registers normal(1e-6) (Darcet et al.'s code, as timm);
  the patch-embedding conv keeps torch's default (kaiming_uniform(a=sqrt(5)):
  U(+-1/sqrt(fan_in)), bias too). 'seed000': seed 000's _init_weights: the conv
  kaiming_normal(fan_out) with zero bias, cls and position embeddings
  randn * 0.02, and nn.MultiheadAttention's in_proj (our qkv) xavier_uniform with
  zero bias, which the seed's loop over nn.Linear never reaches.
  """
  if name not in INITS:
    raise ValueError(f'model.init_scheme={name!r} is not one of {INITS}')
  if name == 'deit':
    bound = 1.0 / patch_fan_in ** 0.5
    return dict(conv=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                conv_bias=_uniform(bound), token=dense_init,
                register=nn.initializers.normal(1e-6), qkv=dense_init)
  return dict(conv=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
              conv_bias=nn.initializers.zeros, token=nn.initializers.normal(0.02),
              register=nn.initializers.normal(0.02),
              qkv=nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'))


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
  """Stochastic-depth rate per block: linear from 0 at the first to max_rate at the last."""
  return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class DropPath(nn.Module):
  """Stochastic depth: drop the whole residual branch per sample, rescale by 1/keep."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class LayerScale(nn.Module):
  init_value: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param('scale', nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where each kind of token sits in the sequence: [cls, dist?, registers..., patches]."""
  num_special: int      # cls (+ dist)
  num_registers: int
  num_patches: int

  @property
  def tokens(self) -> int:
    return self.num_special + self.num_registers + self.num_patches

  @property
  def registers(self) -> slice:
    return slice(self.num_special, self.num_special + self.num_registers)

  @property
  def patches(self) -> slice:
    return slice(self.num_special + self.num_registers, None)

  def kind(self, index: int) -> str:
    if index == 0:
      return 'cls'
    if index < self.num_special:
      return 'dist'
    return 'register' if index < self.num_special + self.num_registers else 'patch'
