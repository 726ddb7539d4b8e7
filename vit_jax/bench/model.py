r"""Train-step benchmark of the model variants, side by side with timm (`bench model`).

  python -m vit_jax.bench model --shapes 32,224 --dtypes float32,bfloat16 \
      --variants vanilla,register,sdpa_gated,value_gated,svd,distill --timm \
      --out results/bench_model.json
  python -m vit_jax.bench model --mode epoch --dtypes bfloat16 --attention_impl cudnn

`step` mode: per shape and dtype, every variant's real jitted train step
(`CompiledSteps.jitted_step`, compiled once), the timm models of the same shapes,
and the matmul peak are timed in interleaved rounds (each warmed alike, the order
shuffled every round), so a noisy shared machine slows all of them alike and the
printed ratios stay fair. FLOPs come from XLA's cost analysis of the compiled step,
memory from that executable's memory analysis (each variant its own, on every device).

`epoch` mode: one CIFAR-100-sized epoch (50k images) of DeiT-S/4 with the
seed-000 recipe's on-device augmentation, on synthetic uint8 batches.

`fmnist` mode: the train step of `configs/vanilla.py:fmnist` as a run takes it (its
on-device augmentation, LAMB, BCE), against the same matmuls timed bare (every GEMM of
the step's forward and backward at its own shapes, in one jitted call) and, with --timm,
timm's VisionTransformer of the same shape (eager; timm's Mixup on the batch, BCE on
binarised targets, timm's LAMB), in interleaved rounds, with the batch sizes of
--fmnist_batches. With --fmnist_profile N it then traces N steps (jax.profiler) and
prints the step's time by region (forward, backward, augmentation, the rest) and kind of
op (matmul, layout copy, elementwise).

`dot_route` mode: where XLA:CPU sends a 6304x384x1536 matmul (ViT-S/16's MLP at batch
32) under each set of DOT_ROUTE_FLAGS, and how fast it runs there: the kind of the
compiled dot (a YNNPACK or oneDNN fusion, a oneDNN custom call, or XLA's own loop) read
from the optimized HLO, float32 and bf16 inputs with float32 accumulation, one process
per flag set. It also says whether the CPU has AMX: oneDNN, linked into jaxlib, has AMX
kernels, so a dot routed to oneDNN on an AMX machine can reach them.
"""
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import config_lib
from vit_jax import models
from vit_jax.models import variants
from vit_jax.models import vit

# The study's variants, and two more the benchmark times: seed 000's SVD taps and DeiT's
# distillation token with its ResNet-50 teacher in the step.
VARIANTS = tuple(variants.VARIANTS) + ('svd', 'distill')
PATCH = {32: 4, 224: 16}

_MODE = flags.DEFINE_enum('mode', 'step', ['step', 'epoch', 'fmnist', 'dot_route'],
                          'What `bench model` times.')
_FMNIST_BATCHES = flags.DEFINE_list('fmnist_batches', ['64'], '`--mode fmnist`: batch sizes.')
_FMNIST_CONFIG = flags.DEFINE_string('fmnist_config', 'vanilla',
                                     '`--mode fmnist`: the config whose :fmnist step is timed.')
_FMNIST_PROFILE = flags.DEFINE_integer(
    'fmnist_profile', 0, '`--mode fmnist`: after the timed rounds, trace this many steps with '
    "jax.profiler and print where the step's time goes (0: no trace).")
_SHAPES = flags.DEFINE_list('shapes', ['32', '224'], 'Image sizes: 32 (patch 4), 224 (patch 16).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), 'Model variants.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size at 32x32 (and in epoch mode).')
_BATCH_224 = flags.DEFINE_integer('batch_224', 0, 'Batch at 224; 0 = 16 on CPU, 256 on GPU.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed rounds (the median is reported).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds after compilation.')
_TIMM = flags.DEFINE_boolean('timm', False, 'Also time timm (needs the bench extra).')
_TIMM_COMPILE = flags.DEFINE_list('timm_compile', ['vanilla'],
                                  'timm variants also timed under torch.compile.')
_ATTENTION = flags.DEFINE_enum('attention_impl', '', ['', 'xla', 'cudnn'],
                               "'' = cudnn for bf16 on a GPU, else xla.")
_EPOCH_IMAGES = flags.DEFINE_integer('epoch_images', 50_000, 'Images of one epoch (epoch mode).')


def on_gpu() -> bool:
  return jax.devices()[0].platform == 'gpu'


def attention_impl(dtype: str) -> str:
  return _ATTENTION.value or ('cudnn' if on_gpu() and dtype == 'bfloat16' else 'xla')


def variant_config(variant: str, image_size: int, dtype: str, batch: int,
                   attention: str = 'xla', **model_overrides):
  """DeiT-III ViT-S at the shape, AdamW, no augmentation; each variant changes one thing."""
  if variant not in VARIANTS:
    raise ValueError(f'variant {variant!r} is not one of {VARIANTS}')
  c = config_lib.base()
  c.batch_size = c.eval_batch_size = batch
  c.dtype = dtype
  c.optim.clip_grad_norm = 1.0      # as the timm runner's step
  c.dataset.update(image_size=image_size, num_classes=100)
  c.model.update(image_size=image_size, patch_size=PATCH[image_size], layerscale_init=1e-4,
                 pos_embed='patches', attention_impl=attention)
  if variant in variants.VARIANTS:
    variants.apply(c.model, variant)
  elif variant == 'svd':   # after every quarter of the blocks: (3, 6, 9, 12) at depth 12
    depth = model_overrides.get('depth', c.model.depth)
    c.model.update(svd_tap_layers=tuple(sorted({max(1, depth * i // 4) for i in range(1, 5)})),
                   svd_rank=32)
  elif variant == 'distill':
    c.model.update(distillation=True, pos_embed='all')
    c.teacher.kind = 'hard'
    c.teacher.model = config_lib.resnet_teacher_model()
    c.teacher.model.update(image_size=image_size, stem='small' if image_size < 64 else 'imagenet')
  c.model.update(model_overrides)
  return c


def synthetic_batch(config, n: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  s = config.dataset.image_size
  return {'image': rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
          'label': rng.integers(0, config.dataset.num_classes, (n,), dtype=np.int32)}


def _first(analysis):
  return analysis[0] if isinstance(analysis, (list, tuple)) else analysis


def compiled_memory_bytes(compiled):
  """Arguments + outputs + temporaries - donated aliases, from XLA's buffer assignment."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


class JaxStep:
  """The project's jitted train step for one config, compiled once, with its analyses."""

  def __init__(self, config):
    from vit_jax.train import steps as train_steps
    teacher = None
    if config.teacher.kind != 'none':
      t_model = models.build_model(config.teacher.model, config.dataset.num_classes)
      teacher = (t_model, models.init_params(t_model, jax.random.key(1)))
    self.steps = train_steps.CompiledSteps(config, teacher=teacher)
    self.state = self.steps.setup(steps_per_epoch=100)
    self.batch = self.steps.global_batch(synthetic_batch(config, config.batch_size))
    t0 = time.perf_counter()
    self.compiled = self.steps.jitted_step.lower(
        self.state, self.batch, self.steps.teacher_params).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops = float(_first(self.compiled.cost_analysis())['flops'])
    self.memory_bytes = compiled_memory_bytes(self.compiled)
    self.params = models.count_params(self.state.params)

  def __call__(self):
    self.state, m = self.compiled(self.state, self.batch, self.steps.teacher_params)
    jax.block_until_ready(m['loss'])


def matmul_peaks(n: int, repeats: int = 3):
  """Runners for `repeats` n^3 matmuls: float32, and bf16 inputs accumulating in float32.

  Both are compiled and run once here, so no round times a compilation; the
  returned FLOP count is that of one runner call.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  ab = a.astype(jnp.bfloat16)
  f32 = jax.jit(lambda x: x @ x)
  mixed = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))

  def runner(fn, x):
    def run():
      for _ in range(repeats):
        fn(x).block_until_ready()
    return run

  runners = {'float32': runner(f32, a), 'bfloat16': runner(mixed, ab)}
  for fn, x in ((f32, a), (mixed, ab)):
    fn(x).block_until_ready()
  return runners, repeats * 2.0 * n**3


def interleaved_medians(runners: dict, rounds: int, warmup: int, seed: int = 0) -> dict:
  """Median seconds per call of each runner, timed round-robin: every runner warmed the same
  number of times, and the order shuffled each round, so none is always first (a first
  runner paid for the others' cooling caches and came out slower)."""
  times = {k: [] for k in runners}
  rng = np.random.default_rng(seed)
  for r in range(warmup + rounds):
    for name in rng.permutation(list(runners)):
      fn = runners[name]
      t0 = time.perf_counter()
      fn()
      if r >= warmup:
        times[name].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def _timm_runners(variants, image_size, batch, dtype, compile_list):
  from vit_jax.bench import timm_runner as bench_timm
  runners, notes = {}, {}
  for v in variants:
    modes = ['eager'] + (['compiled'] if v in compile_list else [])
    for mode in modes:
      fn = bench_timm.runner(v, image_size, PATCH[image_size], batch, dtype, mode == 'compiled')
      if fn is None:
        notes[v] = 'no timm equivalent'
        break
      try:
        secs = bench_timm.compile_seconds(fn)
      except Exception as e:  # torch.compile can fail on a CPU without a working C++ toolchain
        notes[f'{v}/{mode}'] = f'failed: {type(e).__name__}: {str(e)[:200]}'
        continue
      if mode == 'compiled':
        notes[f'{v}/compiled'] = f'first call {secs:.0f} s'
      runners[f'timm/{v}/{mode}'] = fn
  return runners, notes


def bench_group(variants, image_size: int, dtype: str, batch: int, rounds: int, warmup: int,
                timm: bool = False, timm_compile=(), peak_n: int = 0, **model_overrides) -> dict:
  """Every variant (and timm, and the matmul peak) at one shape and dtype, interleaved."""
  jax_steps = {v: JaxStep(variant_config(v, image_size, dtype, batch, attention_impl(dtype),
                                         **model_overrides)) for v in variants}
  peaks, peak_flops = matmul_peaks(peak_n or (8192 if on_gpu() else 2048))
  runners = {f'jax/{v}': s for v, s in jax_steps.items()}
  runners['peak'] = peaks[dtype]
  notes = {}
  if timm:
    timm_runners, notes = _timm_runners(variants, image_size, batch, dtype, timm_compile)
    runners.update(timm_runners)
  secs = interleaved_medians(runners, rounds, warmup)
  peak = peak_flops / secs['peak']
  rows = {}
  for v, s in jax_steps.items():
    t = secs[f'jax/{v}']
    row = {'images_per_s': batch / t, 'step_s': t, 'flops_per_step': s.flops,
           'flops_per_s': s.flops / t, 'peak_fraction': s.flops / t / peak,
           'memory_bytes': s.memory_bytes, 'params': s.params,
           'compile_s': s.compile_s, 'attention_impl': attention_impl(dtype)}
    for mode in ('eager', 'compiled'):
      key = f'timm/{v}/{mode}'
      if key in secs:
        row[f'timm_{mode}_images_per_s'] = batch / secs[key]
        row[f'jax_over_timm_{mode}'] = secs[key] / t
    row['timm_note'] = {k: n for k, n in notes.items() if k.split('/')[0] == v}
    rows[v] = row
  base = rows.get('vanilla')
  if base:
    for row in rows.values():
      row['step_over_vanilla'] = row['step_s'] / base['step_s']
  return {'image_size': image_size, 'patch_size': PATCH[image_size], 'dtype': dtype,
          'batch': batch, 'matmul_peak_flops_per_s': peak, 'variants': rows}


def print_group(g: dict) -> None:
  print(f"\n== {g['image_size']}x{g['image_size']}/{g['patch_size']} {g['dtype']} batch "
        f"{g['batch']}: matmul peak {g['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"(measured in the same rounds)", flush=True)
  for v, r in g['variants'].items():
    mem = f"{r['memory_bytes'] / 2**30:.2f} GiB" if r['memory_bytes'] else 'n/a'
    line = (f"  {v:12s} {r['images_per_s']:8.1f} img/s  {r['flops_per_step'] / 1e9:7.0f} "
            f"GFLOP/step  {r['flops_per_s'] / 1e9:6.0f} GFLOP/s = {r['peak_fraction']:.2f} of "
            f"peak  mem {mem}  x{r.get('step_over_vanilla', 1):.2f} vanilla step")
    for mode in ('eager', 'compiled'):
      if f'timm_{mode}_images_per_s' in r:
        line += (f" | timm {mode} {r[f'timm_{mode}_images_per_s']:.1f} img/s, jax/timm "
                 f"{r[f'jax_over_timm_{mode}']:.2f}x")
    for k, note in r['timm_note'].items():
      line += f' | timm {k}: {note}'
    print(line, flush=True)


def bench_epoch(dtype: str, batch: int, images: int, attention: str = 'xla',
                pool: int = 4, **model_overrides) -> dict:
  """Seconds of one `images`-sized epoch of DeiT-S/4 (seed 000 recipe, on-device augmentation)."""
  from vit_jax.train import steps as train_steps
  c = config_lib.load('deit_cifar100')
  c.batch_size = c.eval_batch_size = batch
  c.dtype = dtype
  c.model.update(attention_impl=attention, **model_overrides)
  compiled = train_steps.CompiledSteps(c)
  steps = images // batch
  state = compiled.setup(steps_per_epoch=steps)
  batches = [compiled.global_batch(synthetic_batch(c, batch, seed=i)) for i in range(pool)]
  state, m = compiled.train_step(state, batches[0])     # compile
  jax.block_until_ready(m['loss'])
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = compiled.train_step(state, batches[i % pool])
  jax.block_until_ready(m['loss'])
  secs = time.perf_counter() - t0
  return {'dtype': dtype, 'batch': batch, 'steps': steps, 'images': steps * batch,
          'attention_impl': attention, 'seconds': secs, 'images_per_s': steps * batch / secs,
          'seconds_per_50k': 50_000 / (steps * batch / secs)}


def step_gemms(c) -> list[tuple[int, int, int, int]]:
  """(batch, m, k, n) of every matmul of a ViT train step: per dense layer the forward
  x W, the input gradient dy W^T and the weight gradient x^T dy; per attention the
  scores and the weighted values, each with its two gradients; the patch embedding
  (forward and weight gradient) and the head."""
  m, b = c.model, c.batch_size
  t = vit.token_layout(m).tokens
  rows, w, hd = b * t, m.width, m.width // m.num_heads
  hidden = int(m.width * m.mlp_ratio)
  dense = [(w, 3 * w), (w, w), (w, hidden), (hidden, w)] + ([(w, w)] if m.gate != 'none' else [])
  shapes = []
  for _ in range(m.depth):
    for k, n in dense:
      shapes += [(1, rows, k, n), (1, rows, n, k), (1, k, rows, n)]
    shapes += [(b * m.num_heads, t, hd, t), (b * m.num_heads, t, t, hd)] * 3
  patch_in = 3 * m.patch_size ** 2
  patches = b * (m.image_size // m.patch_size) ** 2
  shapes += [(1, patches, patch_in, w), (1, patch_in, patches, w)]
  shapes += [(1, b, w, c.dataset.num_classes)] * 3
  return shapes


def gemm_runner(shapes, dtype=jnp.float32):
  """A runner of the bare matmuls (one jitted call) and their FLOPs."""
  rng = np.random.default_rng(0)
  args = [(jnp.asarray(rng.normal(size=(bb, mm, kk)), dtype),
           jnp.asarray(rng.normal(size=(bb, kk, nn)), dtype)) for bb, mm, kk, nn in shapes]
  fn = jax.jit(lambda args: [jnp.matmul(a, b) for a, b in args])
  jax.block_until_ready(fn(args))
  return (lambda: jax.block_until_ready(fn(args))), sum(2.0 * bb * mm * kk * nn
                                                          for bb, mm, kk, nn in shapes)


# Where an op of the compiled step comes from, read from its HLO metadata (op_name): the
# model's backward pass sits under `transpose(jvp(...))`, its forward under `jvp(...)`;
# the on-device augmentation and its random numbers under these names; the rest is the
# loss, the optimizer (LAMB), the non-finite guard and the metrics.
_AUGMENT_NAMES = ('augment', 'pil_stage', 'mix', 'threefry', 'random', '_uniform', '_randint',
                  '_bernoulli', '_beta', '_gamma', '_shuffle')


def op_region(op_name: str) -> str:
  if 'transpose(jvp(' in op_name:
    return 'backward'
  if 'jvp(' in op_name:
    return 'forward'
  if any(a in op_name for a in _AUGMENT_NAMES):
    return 'augmentation'
  return 'loss, optimizer, metrics'


def op_kind(name: str, op_name: str) -> str:
  """matmul (a dot, or a fusion whose root is one), layout (a copy or transpose), or
  elementwise (every other fusion: LayerNorm, softmax, GELU, reductions, updates)."""
  if name.startswith(('dot', 'onednn')) or op_name.endswith('dot_general'):
    return 'matmul'
  if name.startswith(('copy', 'transpose')):
    return 'layout'
  return 'elementwise'


def hlo_op_names(hlo_text: str) -> dict:
  """Instruction name -> op_name metadata ('' when it has none) of a compiled module."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = ', line)
    if m:
      o = re.search(r'op_name="([^"]*)"', line)
      out[m.group(1)] = o.group(1) if o else ''
  return out


def own_durations(events) -> list:
  """(event, its own duration) for each complete ('X') event of a Chrome trace: its
  duration less that of the events nested directly in it on the same thread, so an op that
  runs others (a `while` and its body) is not counted twice."""
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X':
      by_thread[(e.get('pid'), e.get('tid'))].append(e)
  out = []
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e['ts'], -e['dur']))
    stack, child = [], {}
    for e in evs:
      while stack and stack[-1]['ts'] + stack[-1]['dur'] <= e['ts']:
        stack.pop()
      if stack:
        child[id(stack[-1])] = child.get(id(stack[-1]), 0) + e['dur']
      stack.append(e)
    out += [(e, e['dur'] - child.get(id(e), 0)) for e in evs]
  return out


def profile_step(step: 'JaxStep', n: int) -> dict:
  """Milliseconds per step by (region, kind), from a jax.profiler trace of `n` steps.

  Each executed HLO op of the trace is matched by name to the compiled module and
  classified by `op_region` and `op_kind` with its own time (`own_durations`); 'total' is
  their sum (the device time of the ops, without the Python around them)."""
  names = hlo_op_names(step.compiled.as_text())
  ms = collections.Counter()
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(n):
        step()
    [path] = glob.glob(os.path.join(d, '**', '*.trace.json.gz'), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  # Only the module's ops: a trace event of some library inside an op is part of the op.
  for e, own in own_durations([e for e in events if e.get('name') in names]):
    op = names[e['name']]
    ms[f'{op_region(op)} / {op_kind(e["name"], op)}'] += own / 1e3 / n
  out = dict(sorted(ms.items(), key=lambda kv: -kv[1]))
  out['total'] = sum(ms.values())
  return out


def bench_fmnist(rounds: int, warmup: int, timm: bool, batches=(64,), profile: int = 0) -> dict:
  out = {'config': f'configs/{_FMNIST_CONFIG.value}.py:fmnist', 'batches': []}
  for batch in batches:
    c = config_lib.load(_FMNIST_CONFIG.value, 'fmnist')
    c.batch_size = batch
    ours = JaxStep(c)
    gemms, gemm_flops = gemm_runner(step_gemms(c))
    runners = {'ours': ours, 'gemms': gemms}
    if timm:
      from vit_jax.bench import timm_runner as bench_timm
      runners['timm'] = bench_timm.fmnist_runner(c)
      runners['timm']()
    secs = interleaved_medians(runners, rounds, warmup)
    row = {'batch': batch, 'step_s': secs['ours'], 'images_per_s': batch / secs['ours'],
           'flops_per_step': ours.flops, 'flops_per_s': ours.flops / secs['ours'],
           'gemm_flops': gemm_flops, 'gemm_flops_per_s': gemm_flops / secs['gemms'],
           'gemm_s': secs['gemms']}
    row['of_bare_gemm_rate'] = row['flops_per_s'] / row['gemm_flops_per_s']
    row['gemm_share_of_step'] = secs['gemms'] / secs['ours']
    if timm:
      row['timm_step_s'] = secs['timm']
      row['ours_over_timm_speed'] = secs['timm'] / secs['ours']
    out['batches'].append(row)
    print(f"fmnist {out['config']} batch {batch}: step {row['step_s'] * 1e3:.1f} ms "
          f"({row['images_per_s']:.0f} img/s), {row['flops_per_s'] / 1e9:.0f} GFLOP/s = "
          f"{row['of_bare_gemm_rate']:.2f} of the bare matmuls' {row['gemm_flops_per_s'] / 1e9:.0f}"
          f" GFLOP/s at the step's shapes (they take {row['gemm_share_of_step']:.0%} of its time)"
          + (f"; timm eager {row['timm_step_s'] * 1e3:.1f} ms: ours {row['ours_over_timm_speed']:.2f}x"
             if timm else ''), flush=True)
    if profile:
      row['profile_ms'] = profile_step(ours, profile)
      print(f'  where the step goes (jax.profiler, {profile} steps, ms per step): ' + '; '.join(
          f'{k} {v:.1f}' for k, v in row['profile_ms'].items()), flush=True)
  return out


DOT_ROUTE_FLAGS = ('', '--xla_cpu_use_onednn=true',
                   '--xla_cpu_experimental_onednn_fusion_type=dot',
                   # both together: oneDNN's graph-API fusion (__onednn_fusion), the one
                   # oneDNN route compiled into the pip jaxlib (results/fashion_mnist.md)
                   '--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot',
                   '--xla_cpu_experimental_ynn_fusion_type=invalid '
                   '--xla_cpu_experimental_onednn_fusion_type=dot',
                   '--xla_cpu_experimental_ynn_fusion_type=invalid --xla_cpu_use_onednn=true',
                   '--xla_cpu_experimental_ynn_fusion_type=invalid')
_DOT_PROBE = r"""
import json, re, sys, time
import jax, jax.numpy as jnp
m, k, n = 6304, 384, 1536
out = {}
for name, dt in (('float32', jnp.float32), ('bfloat16', jnp.bfloat16)):
  a, b = jnp.ones((m, k), dt), jnp.ones((k, n), dt)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  text = f.lower(a, b).compile().as_text()
  dot = [l for l in text.splitlines() if re.search(r'(fusion|custom-call|dot)\(', l)
         and '%' in l and ('ROOT' in l or 'ENTRY' not in l)]
  route = sorted(set(re.findall(r'(ynn_fusion|xnn_fusion|onednn\w*|__onednn\$\w+|dot_general|'
                                r'kind=k\w+|custom_call_target="[^"]+")', text)))
  f(a, b).block_until_ready()
  ts = []
  for _ in range(5):
    t0 = time.perf_counter(); f(a, b).block_until_ready(); ts.append(time.perf_counter() - t0)
  out[name] = {'route': route, 'gflop_s': 2 * m * k * n / min(ts) / 1e9}
print(json.dumps(out))
"""


def cpu_has(flag: str) -> bool:
  try:
    with open('/proc/cpuinfo') as f:
      return any(flag in line.split() for line in f if line.startswith('flags'))
  except OSError:
    return False


def dot_routes() -> dict:
  """{flags: {dtype: {'route': [...], 'gflop_s': ...}}}, one subprocess per flag set."""
  import subprocess
  import sys
  out = {'amx': cpu_has('amx_tile'), 'avx512_bf16': cpu_has('avx512_bf16'), 'routes': {}}
  for flag_set in DOT_ROUTE_FLAGS:
    env = dict(os.environ, XLA_FLAGS=flag_set, JAX_PLATFORMS='cpu')
    r = subprocess.run([sys.executable, '-c', _DOT_PROBE], env=env, capture_output=True,
                       text=True, timeout=600)
    res = (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else
           {'error': r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'})
    out['routes'][flag_set or '(default)'] = res
    print(f"{flag_set or '(default)'}: " + '; '.join(
        f"{k} {v['gflop_s']:.0f} GFLOP/s via {', '.join(v['route'])}" for k, v in res.items()
        if isinstance(v, dict)) + (res.get('error', '') if 'error' in res else ''), flush=True)
  return out


def run(save=lambda results: None) -> dict:
  """Runs the flagged benchmark, prints it, and returns the numbers (`save`d after each group)."""
  results = {'device': str(jax.devices()[0].device_kind), 'platform': jax.devices()[0].platform,
             'cpu_count': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
             'jax': jax.__version__}
  if _TIMM.value:
    import timm
    import torch
    results.update(torch=torch.__version__, timm=timm.__version__)
  if _MODE.value == 'dot_route':
    results['dot_route'] = dot_routes()
    return results
  if _MODE.value == 'fmnist':
    results['fmnist'] = bench_fmnist(_STEPS.value, _WARMUP.value, _TIMM.value,
                                     [int(b) for b in _FMNIST_BATCHES.value],
                                     _FMNIST_PROFILE.value)
    return results
  if _MODE.value == 'epoch':
    results['epochs'] = []
    for dtype in _DTYPES.value:
      e = bench_epoch(dtype, _BATCH.value, _EPOCH_IMAGES.value, attention_impl(dtype))
      results['epochs'].append(e)
      print(f"epoch: DeiT-S/4 {dtype} batch {e['batch']}, {e['images']} images with on-device "
            f"augmentation: {e['seconds']:.1f} s = {e['images_per_s']:.0f} img/s "
            f"({e['seconds_per_50k']:.1f} s per 50k images)", flush=True)
    return results
  results['groups'] = []
  for shape in (int(s) for s in _SHAPES.value):
    batch = _BATCH.value if shape == 32 else (_BATCH_224.value or (256 if on_gpu() else 16))
    for dtype in _DTYPES.value:
      g = bench_group(_VARIANTS.value, shape, dtype, batch, _STEPS.value, _WARMUP.value,
                      _TIMM.value, _TIMM_COMPILE.value)
      results['groups'].append(g)
      print_group(g)
      save(results)
  return results
