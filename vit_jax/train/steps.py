"""The jitted, data-parallel train and evaluation steps over a device mesh, and their state."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import ml_collections
import optax

from vit_jax import config_lib
from vit_jax import models
from vit_jax.data import augment
from vit_jax.data.augment import normalize
from vit_jax.models import token_norms
from vit_jax.train import losses
from vit_jax.train import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # train steps done (grad_accum_steps of them per optimizer update)
  params: Any
  opt_state: Any
  bad_step: jax.Array   # first step whose loss or gradient was not finite; -1 if none
  # The exponential moving average of params (config.ema), None when it is off.
  ema_params: Any = None
  # (2, train steps per epoch): the loss and top-1 of each train step of the epoch so far,
  # which the host averages at the epoch's end; saved with the state, so a run resumed
  # mid-epoch reports the epoch as if never stopped. None: not recorded.
  epoch_metrics: Any = None


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,),
                       devices=devices)


def check(config) -> None:
  """The batches split over this job's devices; the EMA's decay and warmup are usable."""
  check_batch_sizes(config, jax.device_count())
  config_lib.check_ranges(config, (('ema.decay', 0.0, 1.0 - 1e-12),
                                   ('ema.warmup_gamma', 1e-12, float('inf')),
                                   ('ema.warmup_power', 1e-12, float('inf'))))


def check_batch_sizes(config, n_devices: int) -> None:
  """Global batches are split evenly over the devices of the data axis; with gradient
  accumulation each of the grad_accum_steps micro-batches is."""
  k = config.grad_accum_steps
  if not isinstance(k, int) or k < 1:
    raise ValueError(f'grad_accum_steps={k!r} must be a whole number >= 1 (1 = off)')
  if k > 1 and (config.batch_size <= 0 or config.batch_size % (k * n_devices)):
    raise ValueError(f'batch_size={config.batch_size} must be a positive multiple of '
                     f'grad_accum_steps={k} x {n_devices} devices = {k * n_devices}')
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] <= 0 or config[name] % n_devices:
      raise ValueError(f'{name}={config[name]} must be a positive multiple of the '
                       f'{n_devices} devices')


def ema_decay(cfg, updates):
  """The decay of the EMA update after optimizer update number `updates` (1-based).

  warmup False: the constant cfg.decay (DeiT's timm ModelEma; timm's ModelEmaV3.update
  without a step). warmup True: timm's ModelEmaV3.get_decay(step=updates) as timm's
  train.py calls it: 0 at the first update (the EMA becomes the weights), then
  1 - (1 + s / warmup_gamma) ** -warmup_power with s = updates - 1, at most cfg.decay.
  """
  if not cfg.warmup:
    return jnp.float32(cfg.decay)
  s = jnp.maximum(jnp.asarray(updates, jnp.float32) - 1, 0)
  warm = 1 - (1 + s / cfg.warmup_gamma) ** -cfg.warmup_power
  return jnp.where(s <= 0, 0.0, jnp.minimum(warm, cfg.decay)).astype(jnp.float32)


def ema_update(ema, params, decay):
  """ema + (1 - decay) (params - ema): torch's ema.lerp_(params, 1 - decay) as timm does it."""
  return jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, params)


def train_step(state: TrainState, batch, teacher_params=None, *, model, tx, config, base_rng,
               teacher_model=None):
  """One optimizer step on a global batch; returns the new state and metrics.

  A step whose loss or gradient is not finite is not applied, and neither is
  any later one: `bad_step` records it and the host stops the run.
  """
  rng = jax.random.fold_in(base_rng, state.step)
  rng, aug_rng = jax.random.split(rng)
  targets = losses.smooth_labels(
      jax.nn.one_hot(batch['label'], config.dataset.num_classes), config.loss.label_smoothing)
  images, targets = augment.augment_batch(aug_rng, batch['image'], targets, config)
  base = losses.batch_loss(config.loss)
  teacher_logits = None
  if teacher_model is not None:
    teacher_logits = jax.lax.stop_gradient(
        teacher_model.apply({'params': teacher_params}, images)[0].astype(jnp.float32))

  def objective(params):
    logits, out = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    if getattr(model, 'distillation', False):
      return losses.deit_objective(out['cls_logits'], out['dist_logits'], targets, teacher_logits,
                                   base=base, kind=config.teacher.kind,
                                   alpha=config.teacher.alpha, tau=config.teacher.tau), logits
    return base(logits, targets), logits

  (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  # Train top-1: the argmax of the logits against the argmax of the (mixed, smoothed)
  # target, which is the hard label whenever mixup / cutmix are off.
  acc1 = (jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(jnp.float32).mean()
  k = config.grad_accum_steps
  if k > 1:   # the norm of the gradient the update will use: the mean of the micro-batches'
    n = state.opt_state.mini_step
    grads_seen = jax.tree.map(lambda a, g: a + (g - a) / (n + 1), state.opt_state.acc_grads,
                              grads)
    grad_norm, micro_norm = optax.tree.norm(grads_seen), optax.tree.norm(grads)
  else:
    grad_norm = micro_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(micro_norm)
  apply = finite & (state.bad_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  ema = state.ema_params
  if ema is not None:   # after every optimizer update (timm's train.py, DeiT's engine.py)
    updated = (state.step + 1) // k if k > 1 else state.step + 1
    is_update = (state.step + 1) % k == 0
    new_ema = ema_update(ema, params, ema_decay(config.ema, updated))
    ema = keep(jax.tree.map(lambda n, o: jnp.where(is_update, n, o), new_ema, ema), ema)
  epoch_metrics = state.epoch_metrics
  if epoch_metrics is not None:
    epoch_metrics = epoch_metrics.at[:, state.step % epoch_metrics.shape[1]].set(
        jnp.stack([loss, acc1]).astype(jnp.float32))
  new_state = TrainState(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
      ema_params=ema, epoch_metrics=epoch_metrics)
  return new_state, {'loss': loss, 'grad_norm': grad_norm, 'acc1': acc1}


def eval_step(params, batch, *, model, config):
  """Sums over the real (mask) examples of a padded batch.

  'loss' is softmax cross-entropy on the labels for every model, BCE-trained ones
  included, as DeiT's evaluate() computes it; 'objective' is the training loss
  function (config.loss: label smoothing, BCE binarisation) on the unmixed labels.
  """
  logits, _ = model.apply({'params': params}, normalize(batch['image'], config.dataset))
  labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, config.dataset.num_classes)
  nll = losses.softmax_xent_per_example(logits, onehot)
  objective = losses.per_example_loss(config.loss)(
      logits, losses.smooth_labels(onehot, config.loss.label_smoothing))
  return {'loss': (nll * mask).sum(), 'objective': (objective * mask).sum(),
          'acc1': (losses.topk_correct(logits, labels, 1) * mask).sum(),
          'acc5': (losses.topk_correct(logits, labels, 5) * mask).sum(), 'count': mask.sum()}


def probe_norms(params, images, *, model, config):
  """token_norms.patch_token_norms of the probe images: {'output': (B, N), 'layers': (L, B, N)}."""
  _, out = model.apply({'params': params}, normalize(images, config.dataset), capture=True)
  return token_norms.patch_token_norms(out)


def ema_enabled(config) -> bool:
  return 'ema' in config and config.ema.decay > 0


class CompiledSteps:
  """The train, evaluation and probe steps of one config, compiled for one mesh, with their
  shardings (not config.trainer, which names what main runs)."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, teacher=None):
    """teacher: None, or (model, params) of a frozen teacher run inside the train step."""
    self.config = config
    self.mesh = make_mesh() if mesh is None else mesh
    check_batch_sizes(config, self.mesh.devices.size)
    self.model = models.build_model(config.model, config.dataset.num_classes, config.dtype)
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    self.init_rng, self.base_rng = jax.random.split(jax.random.key(config.seed))
    self.teacher_model, teacher_params = teacher if teacher is not None else (None, None)
    self.teacher_params = (None if teacher_params is None else
                           jax.device_put(teacher_params, self.replicated))

  def setup(self, steps_per_epoch: int, start: dict | None = None) -> TrainState:
    """The compiled steps and the first state. `steps_per_epoch` counts optimizer updates.
    `start` ({param path: array}, e.g. a pretrained checkpoint's) replaces those parameters
    of the model's own init."""
    c = self.config
    self.lr_fn = optim.schedule(c.optim, c.batch_size, steps_per_epoch,
                                optim.schedule_epochs(c))
    self.tx = optim.build(c.optim, self.lr_fn)
    self.accum = c.grad_accum_steps
    if self.accum > 1:   # the schedule counts optimizer updates: MultiSteps' inner state
      self.tx = optax.MultiSteps(self.tx, every_k_schedule=self.accum)
    self.use_ema = ema_enabled(c)
    start = start or {}

    def init(rng, start):
      params = models.init_params(self.model, rng)
      if start:
        flat = flax.traverse_util.flatten_dict(params, sep='/')
        flat.update({k: jnp.asarray(v, flat[k].dtype) for k, v in start.items()})
        params = flax.traverse_util.unflatten_dict(flat, sep='/')
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params), bad_step=jnp.full((), -1, jnp.int32),
                        ema_params=jax.tree.map(jnp.copy, params) if self.use_ema else None,
                        epoch_metrics=jnp.zeros((2, steps_per_epoch * self.accum), jnp.float32))

    abstract = jax.eval_shape(init, self.init_rng, start)
    self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx, config=c,
                          base_rng=self.base_rng, teacher_model=self.teacher_model),
        in_shardings=(self.state_sharding, self.data_sharding, self.replicated),
        out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
    self.jitted_step = step   # for .lower(): the benchmark reads XLA's cost and memory analyses
    self.train_step = lambda state, batch: step(state, batch, self.teacher_params)
    self.eval_step = jax.jit(functools.partial(eval_step, model=self.model, config=c),
                             in_shardings=(self.state_sharding.params, self.data_sharding),
                             out_shardings=self.replicated)
    self.probe = jax.jit(functools.partial(probe_norms, model=self.model, config=c),
                         in_shardings=(self.state_sharding.params, self.data_sharding),
                         out_shardings=self.replicated)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_sharding)
    return self._init(self.init_rng, start)

  def global_batch(self, local: dict) -> dict:
    """Process-local rows -> one global array sharded over the data axis."""
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local.items()}

  def local_rows(self, batch: dict) -> dict:
    """This process's share of a batch that every process holds whole."""
    n = jax.process_count()
    rows = len(next(iter(batch.values()))) // n
    i = jax.process_index()
    return {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}
