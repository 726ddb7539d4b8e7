"""`python -m vit_jax.bench checkpoint`: how long an epoch checkpoint holds up the train loop."""
import statistics
import tempfile
import time

import jax

from vit_jax import config_lib
from vit_jax import models
from vit_jax.train import checkpoint
from vit_jax.train import steps


def bench_checkpoint(config, saves: int = 3) -> dict:
  """Seconds one epoch checkpoint holds up the train loop (median of `saves`), written
  synchronously and in the background (orbax async, the default); each write is let to
  finish, outside the timing, before the next."""
  compiled = steps.CompiledSteps(config)
  state = compiled.setup(steps_per_epoch=1)
  out = {'params': models.count_params(state.params),
         'state_mb': sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20}
  for mode in ('sync', 'async'):
    with tempfile.TemporaryDirectory() as workdir:
      mngr = checkpoint.manager(workdir, 1, async_save=mode == 'async')
      blocked = []
      for step in range(1, saves + 1):
        t0 = time.perf_counter()
        checkpoint.save(mngr, step, state, {'seed': 0}, {'val_acc1': float(step)}, wait=False)
        blocked.append(time.perf_counter() - t0)
        checkpoint.finish(mngr)
      mngr.close()
    out[f'{mode}_blocked_s'] = statistics.median(blocked)
  return out


def run(save) -> dict:
  del save   # written whole at the end
  results = {}
  for name, arg in (('vanilla_quick', 'quick'), ('vit_s16_224', '')):
    results[name] = r = bench_checkpoint(config_lib.load('vanilla', arg))
    print(f"{name}: {r['params']:,} parameters, train state {r['state_mb']:.1f} MiB: the "
          f"loop waits {r['sync_blocked_s']:.3f} s per checkpoint written synchronously, "
          f"{r['async_blocked_s']:.3f} s in the background", flush=True)
  return results
