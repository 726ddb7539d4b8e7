"""How often the quick teacher's argmax equals the label of the view the student trains on.

  python results/distill_quick/teacher_agreement.py   # needs runs/teacher_quick
"""
import importlib.util

import jax
import jax.numpy as jnp

from vit_jax.data import augment
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.train import teacher

SETTINGS = [('no augmentation', {}), ('reflect-pad-1 crop', {'pad': 1}),
            ('reflect-pad-2 crop', {'pad': 2}), ('cutmix 1.0', {'cutmix': 1.0}),
            ('mixup 0.8 / cutmix 1.0', {'mixup': 0.8, 'cutmix': 1.0})]


def quick_config():
  spec = importlib.util.spec_from_file_location('deit_distill', 'configs/deit_distill.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('quick')
  c.teacher.update(kind='hard', checkpoint='runs/teacher_quick')
  return c


def main():
  for name, over in SETTINGS:
    c = quick_config()
    c.dataset.update(random_crop_padding=over.get('pad', 0), crop_padding_mode='reflect')
    c.augment.update(cutmix=over.get('cutmix', 0.0), mixup=over.get('mixup', 0.0))
    model, params = teacher.load(c.teacher, c.dataset.num_classes)
    source = sources.get(c.dataset, 'train')
    batches = pipeline.TrainStream(source, c.dataset, 64, 0).batches(0)
    agree = seen = 0
    for step in range(3 * (len(source) // 64)):            # three epochs of views
      b = next(batches)
      targets = jax.nn.one_hot(b['label'], c.dataset.num_classes)
      x, targets = augment.augment_batch(jax.random.key(step), jnp.asarray(b['image']), targets, c)
      logits, _ = model.apply({'params': params}, x)
      agree += int((logits.argmax(-1) == targets.argmax(-1)).sum())
      seen += len(targets)
    print(f'{name}: teacher argmax == label on {100 * agree / seen:.2f}% of {seen} views')


if __name__ == '__main__':
  main()
