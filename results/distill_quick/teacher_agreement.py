"""How often the quick teacher's argmax differs from the label of the view the student trains on."""
import importlib.util
import jax, jax.numpy as jnp, numpy as np
from vit_jax import teacher, train
from vit_jax.data import sources, pipeline

spec = importlib.util.spec_from_file_location('c', 'configs/deit_distill.py')
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
for setting, over in [('none', {}), ('crop pad 1', {'pad': 1}), ('crop pad 2', {'pad': 2}),
                      ('cutmix 1.0', {'cutmix': 1.0}), ('mixup 0.8 / cutmix 1.0', {'mixup': 0.8, 'cutmix': 1.0})]:
  c = m.get_config('quick')
  c.teacher.kind = 'hard'; c.teacher.checkpoint = 'runs/teacher_quick'
  c.dataset.random_crop_padding = over.get('pad', 0)
  c.augment.cutmix = over.get('cutmix', 0.0); c.augment.mixup = over.get('mixup', 0.0)
  tmodel, tparams = teacher.load(c.teacher, 10)
  src = sources.get(c.dataset, 'train')
  it = iter(pipeline.train_loader(src, c.dataset, 64, 0))
  agree = n = 0
  for step in range(3 * (len(src) // 64)):   # three epochs of views
    b = next(it)
    onehot = jax.nn.one_hot(b['label'], 10)
    x, t = train.augment_batch(jax.random.key(step), jnp.asarray(b['image']), onehot, c)
    logits, _ = tmodel.apply({'params': tparams}, x)
    agree += int((logits.argmax(-1) == t.argmax(-1)).sum()); n += len(t)
  print(f'{setting}: teacher argmax == label argmax on {100 * agree / n:.2f}% of {n} training views', flush=True)
