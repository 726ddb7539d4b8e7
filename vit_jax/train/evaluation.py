"""Host loops over the validation split: accuracy and losses, and the fixed probe batch."""
import jax
import jax.numpy as jnp

from vit_jax.data import pipeline
from vit_jax.data import sources


def eval_batches(compiled, source, batch_size: int):
  """The split in fixed order, cropped as the data set's evaluation policy says."""
  d = compiled.config.dataset
  return pipeline.eval_batches(source, batch_size, image_size=sources.eval_crop(d),
                               crop_ratio=d.eval_crop_ratio)


def evaluate(compiled, params, source) -> dict:
  """val_loss, val_acc1, val_acc5 and val_objective over the whole split."""
  totals, unreadable = None, []
  for batch in eval_batches(compiled, source, compiled.config.eval_batch_size):
    unreadable += batch.pop('unreadable')
    sums = compiled.eval_step(params, compiled.global_batch(compiled.local_rows(batch)))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if jax.process_index() == 0:   # every process reads the whole split
    pipeline.report_unreadable('evaluation', 'left out', unreadable)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'val_loss': float(totals['loss']) / count,
          'val_acc1': 100.0 * float(totals['acc1']) / count,
          'val_acc5': 100.0 * float(totals['acc5']) / count,
          'val_objective': float(totals['objective']) / count}


def probe_batch(compiled, source):
  """pipeline.probe_batch's images of the validation split, as many of the first
  probe.num_images as divide over the devices, on them."""
  n_dev = compiled.mesh.devices.size
  n = max(n_dev, compiled.config.probe.num_images // n_dev * n_dev)
  d = compiled.config.dataset
  images = pipeline.probe_batch(source, n, sources.eval_crop(d), d.eval_crop_ratio)['image']
  if len(images) < n_dev:
    raise ValueError(f'the validation split has {len(images)} readable images, fewer than '
                     f'the {n_dev} devices the probe batch needs')
  images = images[:len(images) // n_dev * n_dev]
  return compiled.global_batch(compiled.local_rows({'image': images}))['image']
