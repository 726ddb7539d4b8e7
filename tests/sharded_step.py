"""Run in a subprocess with 4 host devices: the 4-device train step equals the 1-device one."""
import importlib.util
import os
import sys

import jax
import numpy as np

from vit_jax.data import pipeline, sources
from vit_jax.train import steps

spec = importlib.util.spec_from_file_location('cfg', os.path.join(sys.argv[1], 'configs/sdpa_gated.py'))
cfg_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cfg_module)
config = cfg_module.get_config('quick')
config.model.update(depth=2, drop_path_rate=0.1)   # dropout rng must agree too
assert jax.device_count() == 4, jax.devices()

src = sources.digits('train', 16)
batch = next(pipeline.eval_batches(src, config.batch_size))
del batch['mask']
results = []
for devices in (jax.devices()[:1], jax.devices()):
  trainer = steps.Trainer(config, mesh=steps.make_mesh(devices))
  state = trainer.setup(steps_per_epoch=23)
  losses = []
  for _ in range(3):
    global_batch = trainer.global_batch(batch)
    assert len(global_batch['image'].sharding.device_set) == len(devices)
    state, metrics = trainer.train_step(state, global_batch)
    losses.append(float(metrics['loss']))
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == len(devices)
  results.append((np.array(losses), jax.device_get(state.params)))

(l1, p1), (l4, p4) = results
np.testing.assert_allclose(l4, l1, rtol=1e-5, atol=1e-6)
diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))
assert diff < 1e-5, diff
print(f'OK losses={l1.tolist()} max_param_diff={diff:.2e}')
