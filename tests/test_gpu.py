"""`python -m vit_jax.bench gpu`: on a machine without a GPU, one line and exit 0; the GPU
checks themselves run where there is one (skipped here; the same functions run inside
`bench gpu`, and the sharded-step function is also tested on 4 CPU devices, test_train)."""
import os
import subprocess
import sys

import jax
import pytest

from conftest import REPO
from vit_jax.bench import gpu

needs_gpu = pytest.mark.skipif(not gpu.gpus(), reason='needs a CUDA GPU')


def test_without_a_gpu_one_line_and_exit_0(tmp_path):
  if gpu.gpus():
    pytest.skip('this machine has a GPU')
  md = tmp_path / 'gpu.md'
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.bench', 'gpu', f'--md={md}',
                         f'--out={tmp_path / "gpu.json"}'], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines == ['bench gpu: no CUDA GPU here (JAX sees cpu); nothing measured, nothing '
                   'written'], proc.stdout
  assert not md.exists() and not (tmp_path / 'gpu.json').exists()
  assert 'tensorflow' not in proc.stderr.lower()


def test_the_gpu_path_imports_neither_tensorflow_nor_grain():
  code = ('import sys; import vit_jax.bench.gpu; '
          'print(sorted(m for m in ("tensorflow", "grain", "clu", "tensorflow_datasets") '
          'if m in sys.modules))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == '[]'


def test_an_unknown_benchmark_is_one_line():
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.bench', 'gpus'], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: unknown benchmark 'gpus'; available: data, model, checkpoint, gpu, seeds, peer"]


@needs_gpu
def test_cudnn_attention_equals_xla_in_bf16():
  assert gpu.attention_difference() <= gpu.ATTENTION_ATOL


@needs_gpu
def test_vit_logits_with_cudnn_attention_equal_xla_in_bf16():
  assert gpu.vit_logits_difference() <= gpu.LOGITS_ATOL


@pytest.mark.skipif(len(gpu.gpus()) < 2, reason='needs 2 or more GPUs')
def test_the_step_sharded_over_the_gpus_equals_one_gpu():
  r = gpu.checks()['sharded']
  assert r['ok'], r



def test_the_report_renders_a_measured_group():
  """results/gpu.md's writer on a group really measured here (tiny, CPU), so a report
  bug cannot waste a GPU run that only reaches it at the end."""
  from vit_jax.bench import model as bench_model
  g = bench_model.bench_group(['vanilla', 'register'], 32, 'float32', 4, rounds=1, warmup=0,
                              peak_n=256, depth=1, width=32, num_heads=2)
  r = {'device': 'cpu', 'jax': jax.__version__, 'gpu_count': 0, 'date': 'today',
       'seconds': 1.0, 'groups': [g],
       'checks': {'attention_max_diff': 0.01, 'attention_atol': gpu.ATTENTION_ATOL,
                  'attention_ok': True, 'vit_logits_max_diff': 0.1,
                  'vit_logits_atol': gpu.LOGITS_ATOL, 'vit_logits_ok': False,
                  'sharded': 'not checked: needs 2 or more GPUs, this machine has 0'},
       'epoch': {'images': 512, 'batch': 64, 'dtype': 'bfloat16', 'seconds': 2.0,
                 'images_per_s': 256.0}}
  md = gpu.markdown(r)
  rows = [l for l in md.splitlines() if l.startswith('| vanilla') or l.startswith('| register')]
  assert len(rows) == 2 and all(l.count('|') == 11 for l in rows), md
  assert 'FAILED' in md and 'not checked: needs 2 or more GPUs' in md and '2.00 s' in md
