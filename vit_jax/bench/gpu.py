r"""`python -m vit_jax.bench gpu`: the GPU check, one command, about 10 minutes on one GPU.

  python -m vit_jax.bench gpu [--out results/gpu.json]   (writes results/gpu.md)

1. checks: cuDNN attention equals XLA's in bf16 (the attention itself and a ViT-S/16's
   logits, within stated tolerances); the train step sharded over every GPU equals the
   step on one (needs 2 or more GPUs);
2. the train step of every variant at 32/4 and 224/16 in bf16 with cuDNN attention, each
   variant's own memory (from its executable), against the matmul peak;
3. one DeiT-S/4 CIFAR-100 epoch (50k synthetic images, seed 000's on-device augmentation);
4. ViT-S/16 at 224 against timm on the same GPU, eager and torch.compile, bf16 autocast.

Without a GPU it says so in one line and exits 0. It imports neither TensorFlow nor grain:
the GPU machines hold jax, flax, optax, orbax, chex, torch and timm, and ml_collections
travels as a wheel.
"""
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models
from vit_jax.bench import model as bench_model
from vit_jax.train import steps as train_steps

_MD = flags.DEFINE_string('md', 'results/gpu.md', '`bench gpu`: the report it writes.')
_QUICK = flags.DEFINE_boolean('quick', False, '`bench gpu`: smaller shapes and fewer rounds.')

# bf16 attention: cuDNN's fused kernel and XLA's softmax(QK^T)V round differently. Measured
# bounds on the probabilities' outputs (|o| ~ 1) and on a ViT-S/16's logits (|z| ~ 1).
ATTENTION_ATOL = 2e-2
LOGITS_ATOL = 5e-2


def gpus() -> list:
  return [d for d in jax.devices() if d.platform == 'gpu']


def attention_difference(key=jax.random.key(0), shape=(8, 197, 6, 64)) -> float:
  """Largest |cuDNN - XLA| of jax.nn.dot_product_attention on peaked bf16 inputs."""
  kq, kk, kv = jax.random.split(key, 3)
  q = (4 * jax.random.normal(kq, shape)).astype(jnp.bfloat16)   # peaked, not near-uniform
  k = jax.random.normal(kk, shape).astype(jnp.bfloat16)
  v = jax.random.normal(kv, shape).astype(jnp.bfloat16)
  out = {impl: jax.jit(lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
      q, k, v, implementation=impl))(q, k, v).astype(jnp.float32) for impl in ('xla', 'cudnn')}
  return float(jnp.abs(out['cudnn'] - out['xla']).max())


def vit_logits_difference(image_size: int = 224, batch: int = 8) -> float:
  """Largest |logit| difference of one ViT-S/16 in bf16, cuDNN vs XLA attention."""
  logits = {}
  for impl in ('xla', 'cudnn'):
    c = bench_model.variant_config('vanilla', image_size, 'bfloat16', batch, attention=impl)
    model = models.build_model(c.model, c.dataset.num_classes, c.dtype)
    params = models.init_params(model, jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (batch, image_size, image_size, 3))
    logits[impl] = jax.jit(lambda p, x: model.apply({'params': p}, x)[0])(params, images)
  return float(jnp.abs(logits['cudnn'] - logits['xla']).max())


def sharded_vs_single(config, devices, batch: dict, n_steps: int = 3) -> dict:
  """Losses and params after n_steps on one device and sharded over `devices`."""
  results = []
  for mesh_devices in (devices[:1], devices):
    compiled = train_steps.CompiledSteps(config, mesh=train_steps.make_mesh(mesh_devices))
    state = compiled.setup(steps_per_epoch=23)
    losses = []
    for _ in range(n_steps):
      global_batch = compiled.global_batch(batch)
      assert len(global_batch['image'].sharding.device_set) == len(mesh_devices)
      state, metrics = compiled.train_step(state, global_batch)
      losses.append(float(metrics['loss']))
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == len(mesh_devices)
    results.append((np.array(losses), jax.device_get(state.params)))
  (l1, p1), (ln, pn) = results
  return {'devices': len(devices), 'losses_one': l1.tolist(), 'losses_all': ln.tolist(),
          'max_loss_diff': float(np.abs(ln - l1).max()),
          'max_param_diff': max(float(np.abs(a - b).max())
                                for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(pn)))}


def checks() -> dict:
  out = {'attention_max_diff': attention_difference(), 'attention_atol': ATTENTION_ATOL,
         'vit_logits_max_diff': vit_logits_difference(), 'vit_logits_atol': LOGITS_ATOL}
  out['attention_ok'] = out['attention_max_diff'] <= ATTENTION_ATOL
  out['vit_logits_ok'] = out['vit_logits_max_diff'] <= LOGITS_ATOL
  devices = gpus()
  if len(devices) < 2:
    out['sharded'] = f'not checked: needs 2 or more GPUs, this machine has {len(devices)}'
  else:
    c = bench_model.variant_config('sdpa_gated', 32, 'float32', 16 * len(devices), depth=2)
    c.model.drop_path_rate = 0.1                       # the dropout rngs must agree too
    r = sharded_vs_single(c, devices, bench_model.synthetic_batch(c, c.batch_size))
    r['ok'] = r['max_loss_diff'] <= 1e-5 and r['max_param_diff'] <= 1e-5
    out['sharded'] = r
  return out


def markdown(r: dict) -> str:
  """results/gpu.md from the numbers of one run."""
  c = r['checks']
  lines = [f"# GPU check on {r['device']} (`python -m vit_jax.bench gpu`)", '',
           f"jax {r['jax']}, {r['gpu_count']} GPU(s); {r['date']}; {r['seconds']:.0f} s in all.", '',
           '## Checks', '',
           f"- cuDNN vs XLA attention, bf16, peaked inputs: max |diff| {c['attention_max_diff']:.2e} "
           f"(tolerance {c['attention_atol']}): {'ok' if c['attention_ok'] else 'FAILED'}",
           f"- ViT-S/16 logits, cuDNN vs XLA attention, bf16: max |diff| "
           f"{c['vit_logits_max_diff']:.2e} (tolerance {c['vit_logits_atol']}): "
           f"{'ok' if c['vit_logits_ok'] else 'FAILED'}"]
  s = c['sharded']
  lines.append(f'- sharded step: {s}' if isinstance(s, str) else
               f"- train step sharded over {s['devices']} GPUs vs one: max loss diff "
               f"{s['max_loss_diff']:.1e}, max param diff {s['max_param_diff']:.1e}: "
               f"{'ok' if s['ok'] else 'FAILED'}")
  for g in r['groups']:
    lines += ['', f"## {g['image_size']}x{g['image_size']}/{g['patch_size']}, {g['dtype']}, batch "
              f"{g['batch']} (matmul peak {g['matmul_peak_flops_per_s'] / 1e12:.0f} TFLOP/s "
              'in the same rounds)', '',
              '| variant | img/s | TFLOP/s | of peak | memory (its executable) | step / vanilla '
              '| timm eager img/s | JAX / timm eager | timm compiled img/s | JAX / timm compiled |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for v, row in g['variants'].items():
      mem = f"{row['memory_bytes'] / 2**30:.2f} GiB" if row['memory_bytes'] else 'n/a'
      timm = ''.join(
          f" {row[f'timm_{m}_images_per_s']:.0f} | {row[f'jax_over_timm_{m}']:.2f}x |"
          if f'timm_{m}_images_per_s' in row else ' | |' for m in ('eager', 'compiled'))
      lines.append(f"| {v} | {row['images_per_s']:.0f} | {row['flops_per_s'] / 1e12:.0f} | "
                   f"{row['peak_fraction']:.2f} | {mem} | {row.get('step_over_vanilla', 1):.2f} |"
                   + timm)
  e = r['epoch']
  lines += ['', '## One DeiT-S/4 CIFAR-100 epoch', '',
            f"{e['images']} synthetic images, batch {e['batch']}, {e['dtype']}, seed 000's "
            f"on-device augmentation: {e['seconds']:.2f} s ({e['images_per_s']:.0f} img/s; "
            'seed 000 measured 5.4 s on its GPU).', '']
  return '\n'.join(lines)


def run(save) -> dict | None:
  if not gpus():
    print(f'bench gpu: no CUDA GPU here (JAX sees {jax.devices()[0].platform}); '
          'nothing measured, nothing written', flush=True)
    return None
  t0 = time.time()
  quick = _QUICK.value
  r = {'device': jax.devices()[0].device_kind, 'gpu_count': len(gpus()), 'jax': jax.__version__,
       'date': time.strftime('%Y-%m-%d'), 'groups': []}
  r['checks'] = checks()
  print(f"checks: {r['checks']}", flush=True)
  save(r)
  variants = ('vanilla', 'register') if quick else bench_model.VARIANTS
  for shape, batch in ((32, 256), (224, 64 if quick else 256)):
    g = bench_model.bench_group(variants, shape, 'bfloat16', batch, rounds=2 if quick else 5,
                                warmup=1, timm=shape == 224,
                                timm_compile=('vanilla',) if shape == 224 else ())
    bench_model.print_group(g)
    r['groups'].append(g)
    save(r)
  r['epoch'] = bench_model.bench_epoch('bfloat16', 256, 5_000 if quick else 50_000, 'cudnn')
  r['seconds'] = time.time() - t0
  os.makedirs(os.path.dirname(_MD.value) or '.', exist_ok=True)
  with open(_MD.value, 'w') as f:
    f.write(markdown(r))
  print(f"wrote {_MD.value} ({r['seconds']:.0f} s)", flush=True)
  return r
