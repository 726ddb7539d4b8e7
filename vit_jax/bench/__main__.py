r"""Benchmarks that print ratios measured in one run.

  python -m vit_jax.bench data [--workers 2] [--out results/bench_data.json]
  python -m vit_jax.bench model [--timm] [--out results/bench_model.json]
  python -m vit_jax.bench checkpoint [--out results/bench_checkpoint.json]
  python -m vit_jax.bench gpu [--out results/gpu.json]          (writes results/gpu.md)
  python -m vit_jax.bench seeds [--out results/bench_seeds.json]
  python -m vit_jax.bench peer [--seeds 0,1,2] [--out results/fashion_mnist/peer.json]

data (bench/data.py): the input pipeline against the train step; model (bench/model.py):
the train step of every variant against timm and the matmul peak; checkpoint
(bench/checkpoint.py): how long a checkpoint holds up the train loop; gpu (bench/gpu.py):
the GPU check (without a GPU: one line, exit 0); seeds (bench/seeds.py): seed 000's taps
and seed 003's study against the seeds' own code; peer (bench/peer.py): the vanilla
Fashion-MNIST recipe trained here and by timm + torch, top-1 and epoch speed. Only the named benchmark's module is
imported, so `gpu` needs neither TensorFlow nor grain.
"""
import importlib
import json
import os
import sys

# TensorFlow (tfds, in `data`) starts quietly.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from vit_jax import exits  # noqa: E402

# Benchmark name -> its module, which defines its flags and run(save) -> results (None:
# nothing measured).
BENCHMARKS = {'data': 'vit_jax.bench.data', 'model': 'vit_jax.bench.model',
              'checkpoint': 'vit_jax.bench.checkpoint', 'gpu': 'vit_jax.bench.gpu',
              'seeds': 'vit_jax.bench.seeds', 'peer': 'vit_jax.bench.peer'}

_OUT = flags.DEFINE_string('out', '', 'Write the numbers as JSON here too.')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  _write(importlib.import_module(BENCHMARKS[argv[1]]).run(save=_write))


def _write(results: dict | None) -> None:
  if results is not None and _OUT.value:
    results['command'] = ' '.join(['python -m vit_jax.bench'] + sys.argv[1:])
    with open(_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  name = sys.argv[1] if len(sys.argv) > 1 else ''
  if name not in BENCHMARKS:
    exits.fail(f'unknown benchmark {name!r}; available: {", ".join(BENCHMARKS)}')
  importlib.import_module(BENCHMARKS[name])       # its flags, before they are parsed
  app.run(main)
