"""launch/: the auto-restart wrapper's decisions and the SLURM script's requeue, with fake commands."""
import os
import subprocess
import time

import pytest

from conftest import REPO

FLAKY = '''n=$(cat "$1" 2>/dev/null || echo 0); echo $((n + 1)) > "$1"
[ "$n" -ge "$2" ] && exit 0; exit "$3"'''


def _autorestart(*cmd, **env):
  env = dict(os.environ, BACKOFF_S='1', BACKOFF_MAX_S='2', **env)
  start = time.time()
  proc = subprocess.run(['bash', 'launch/autorestart.sh', *cmd], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)
  return proc, time.time() - start


def test_crashes_are_retried_with_doubling_backoff(tmp_path):
  count = tmp_path / 'n'   # the fake run fails three times with 137, then succeeds
  proc, took = _autorestart('bash', '-c', FLAKY, '-', str(count), '3', '137')
  assert proc.returncode == 0, proc.stderr
  assert count.read_text().strip() == '4'
  waits = [l.split(' in ')[1] for l in proc.stderr.splitlines() if 'retry' in l]
  assert waits == ['1s', '2s', '2s']        # doubled, capped at BACKOFF_MAX_S
  assert took >= 5


def test_gives_up_after_max_retries_with_the_last_code(tmp_path):
  count = tmp_path / 'n'
  proc, _ = _autorestart('bash', '-c', FLAKY, '-', str(count), '99', '1', MAX_RETRIES='2')
  assert proc.returncode == 1
  assert count.read_text().strip() == '3'    # the first run and 2 retries
  assert 'giving up after 2 retries' in proc.stderr


@pytest.mark.parametrize('code,runs,final', [(2, '1', 2), (75, '4', 0)])
def test_error_exit_stops_and_preemption_resumes_at_once(tmp_path, code, runs, final):
  count = tmp_path / 'n'
  proc, took = _autorestart('bash', '-c', FLAKY, '-', str(count), '3', str(code), MAX_RETRIES='0')
  assert proc.returncode == final, proc.stderr
  assert count.read_text().strip() == runs
  assert took < 5                           # no backoff for either


def test_sigterm_to_the_wrapper_reaches_the_run_and_stops(tmp_path):
  marker = tmp_path / 'got_term'
  script = f'trap "touch {marker}; exit 75" TERM; sleep 30 & wait'
  proc = subprocess.Popen(['bash', 'launch/autorestart.sh', 'bash', '-c', script], cwd=REPO,
                          stderr=subprocess.PIPE, text=True)
  assert 'started pid' in proc.stderr.readline()
  time.sleep(0.5)
  proc.terminate()
  assert proc.wait(timeout=20) == 75
  assert marker.exists()


def test_slurm_script_requeues_after_preemption(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls'
  for name, code in (('srun', 75), ('scontrol', 0)):
    (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {code}\n')
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='42',
             SLURM_SUBMIT_DIR=REPO, CONFIG='configs/vanilla.py', WORKDIR='/shared/run')
  proc = subprocess.run(['bash', 'launch/slurm.sbatch', '--config.total_epochs=5'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 75
  calls = log.read_text().splitlines()
  assert calls[0].startswith('srun ') and calls[0].endswith(
      'python -m vit_jax.main --config configs/vanilla.py --workdir /shared/run '
      '--config.total_epochs=5')
  assert calls[1] == 'scontrol requeue 42'
