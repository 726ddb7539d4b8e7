"""config.trainer='evaluate': top-1, top-5 and per-class accuracy of one saved checkpoint.

    python -m vit_jax.main --config configs/X.py --workdir RUN --config.trainer=evaluate \
      [--config.evaluate.checkpoint=latest|best|EPOCH] [--config.evaluate.weights=raw|ema] \
      [--config.evaluate.split=val|train]

No training: the checkpoint's params (or their EMA) are run over the whole split in fixed
order with the evaluation crop, as the training run's per-epoch evaluation does, so the
top-1 of 'val' with 'raw' weights is that epoch's val_acc1 in metrics.csv. Written to
the workdir: evaluate_<split>_<epoch>_<weights>.json (the accuracies) and .npz (the
logits and labels, for other statistics), each atomically, under names of their own; the
run lock is not taken, so this may run beside the training that writes the workdir
(it reads only finished checkpoints), as analyze does.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import files
from vit_jax import models
from vit_jax.data import sources
from vit_jax.data.augment import normalize
from vit_jax.train import checkpoint
from vit_jax.train import evaluation
from vit_jax.train import losses
from vit_jax.train import steps

SPLITS = ('val', 'train')


def check(config, workdir: str) -> int:
  """Every bad input in one line before any model runs; returns the epoch to evaluate."""
  e = config.evaluate
  if e.split not in SPLITS:
    raise ValueError(f'evaluate.split={e.split!r} is not one of {SPLITS}')
  if e.weights not in checkpoint.WEIGHTS:
    raise ValueError(f'evaluate.weights={e.weights!r} is not one of {tuple(checkpoint.WEIGHTS)}')
  sources.check_available(config.dataset)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir!r} does not exist; evaluate needs a training '
                            'workdir')
  # The result files are written at the end: fail now, not after the evaluation.
  files.require_writable(workdir, 'workdir', 'evaluate writes its result there')
  epoch = checkpoint.select_step(workdir, e.checkpoint, 'evaluate.checkpoint')
  step_dir = checkpoint.epoch_dir(workdir, epoch)
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')
  checkpoint.require_model(step_dir, model,
                           f'checkpoint {step_dir!r} was made with another model than this config')
  checkpoint.require_weights(step_dir, e.weights, 'evaluate.weights')
  return epoch


def logits_and_correct(params, batch, *, model, config):
  """Float32 logits and per-example top-1 / top-5 hits, computed as eval_step does."""
  logits, _ = model.apply({'params': params}, normalize(batch['image'], config.dataset))
  logits = logits.astype(jnp.float32)
  return {'logits': logits, 'top1': losses.topk_correct(logits, batch['label'], 1),
          'top5': losses.topk_correct(logits, batch['label'], 5)}


def run_split(compiled, params, source) -> dict:
  """{'logits' (N, C), 'labels' (N,), 'top1' (N,), 'top5' (N,)} of the readable examples."""
  fn = jax.jit(functools.partial(logits_and_correct, model=compiled.model, config=compiled.config),
               in_shardings=(compiled.replicated, compiled.data_sharding),
               out_shardings=compiled.replicated)
  params = jax.device_put(params, compiled.replicated)
  parts = []
  for batch in evaluation.eval_batches(compiled, source, compiled.config.eval_batch_size):
    batch.pop('unreadable')
    out = jax.device_get(fn(params, compiled.global_batch(compiled.local_rows(batch))))
    mask = batch['mask'].astype(bool)
    parts.append({**{k: v[mask] for k, v in out.items()}, 'labels': batch['label'][mask]})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def summary(out: dict, num_classes: int) -> dict:
  """Top-1 / top-5 (%) over the split and top-1 (%) and count of every class."""
  labels = out['labels']
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels, weights=out['top1'], minlength=num_classes)
  per_class = [None if n == 0 else 100.0 * h / n for h, n in zip(hits, counts)]
  return {'count': int(len(labels)), 'acc1': 100.0 * float(out['top1'].mean(dtype=np.float64)),
          'acc5': 100.0 * float(out['top5'].mean(dtype=np.float64)), 'per_class_acc1': per_class,
          'per_class_count': counts.tolist()}


def evaluate(config, workdir: str) -> dict:
  """Evaluate the chosen checkpoint; returns the summary written to the workdir."""
  epoch = check(config, workdir)
  e = config.evaluate
  step_dir = checkpoint.epoch_dir(workdir, epoch)
  compiled = steps.CompiledSteps(config)
  abstract = models.abstract_params(compiled.model)
  params = jax.tree.map(lambda a, p: np.asarray(p, a.dtype), abstract,
                        checkpoint.restore_params(step_dir, e.weights))
  out = run_split(compiled, params, sources.get(config.dataset, e.split))
  result = {'epoch': epoch, 'weights': e.weights, 'split': e.split,
            'dataset': config.dataset.name, **summary(out, config.dataset.num_classes)}
  if jax.process_index() == 0:
    stem = os.path.join(workdir, f'evaluate_{e.split}_{epoch}_{e.weights}')
    with files.atomic(stem + '.npz', 'wb') as f:
      np.savez(f, logits=out['logits'], labels=out['labels'])
    files.write_json(stem + '.json', result)
    print(f"epoch {epoch} ({e.weights} weights) on {config.dataset.name} {e.split}: top-1 "
          f"{result['acc1']:.2f}% top-5 {result['acc5']:.2f}% over {result['count']} images; "
          f'written to {stem}.json', flush=True)
  return result
