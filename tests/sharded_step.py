"""Run in a subprocess with 4 host devices: the 4-device train step equals the 1-device one
(the same function `python -m vit_jax.bench gpu` runs over the GPUs)."""
import importlib.util
import os
import sys

import jax

from vit_jax.bench import gpu
from vit_jax.bench import model as bench_model

spec = importlib.util.spec_from_file_location('cfg', os.path.join(sys.argv[1], 'configs/sdpa_gated.py'))
cfg_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cfg_module)
config = cfg_module.get_config('quick')
config.model.update(depth=2, drop_path_rate=0.1)   # dropout rng must agree too
assert jax.device_count() == 4, jax.devices()

r = gpu.sharded_vs_single(config, jax.devices(), bench_model.synthetic_batch(config, config.batch_size))
assert r['max_loss_diff'] <= 1e-5 and r['max_param_diff'] < 1e-5, r
print(f"OK losses={r['losses_one']} max_param_diff={r['max_param_diff']:.2e}")
