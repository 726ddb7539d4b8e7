"""JAX's multi-process runtime: one process per host (or GPU), started before any JAX call.

`config.distributed` names the coordinator, the process count and this
process's id; left empty, a SLURM (or Open MPI) job is detected from its
environment, and anything else runs as one process. A start-up that cannot
gather every process ends within `init_timeout_s` with one line naming the
address and the count, instead of hanging or aborting with a C++ trace.
"""
import os
import sys
import threading

import jax

from vit_jax import exits



# (name, process-count variable, variable that only a launched task has): what
# jax.distributed.initialize() detects by itself when given no arguments.
CLUSTERS = (('SLURM', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST'),
            ('Open MPI', 'OMPI_COMM_WORLD_SIZE', 'OMPI_MCA_orte_hnp_uri'))


def _cluster_env() -> str | None:
  """The cluster manager that launched several processes of this job, if any."""
  for name, count, task in CLUSTERS:
    if int(os.environ.get(count, '1')) > 1 and task in os.environ:
      return name
  return None


def check(cfg) -> None:
  """Config errors, raised as ValueError before anything connects."""
  if cfg.num_processes < 0:
    raise ValueError(f'distributed.num_processes={cfg.num_processes} must be >= 0 (0 = detect)')
  if cfg.init_timeout_s <= 0:
    raise ValueError(f'distributed.init_timeout_s={cfg.init_timeout_s} must be > 0')
  if cfg.num_processes > 1 and not cfg.coordinator_address and not _cluster_env():
    raise ValueError(f'distributed.num_processes={cfg.num_processes} needs '
                     'distributed.coordinator_address=HOST:PORT (or a SLURM job)')
  if cfg.coordinator_address and ':' not in cfg.coordinator_address:
    raise ValueError(f'distributed.coordinator_address={cfg.coordinator_address!r} '
                     'must be HOST:PORT')
  n = cfg.num_processes
  if cfg.process_id >= 0 and n and cfg.process_id >= n:
    raise ValueError(f'distributed.process_id={cfg.process_id} must be < '
                     f'distributed.num_processes={n}')


def wanted(cfg) -> bool:
  return bool(cfg.coordinator_address) or cfg.num_processes > 1 or _cluster_env() is not None


def initialize(cfg) -> None:
  """jax.distributed.initialize from the config, bounded by cfg.init_timeout_s."""
  if not wanted(cfg):
    return
  where = cfg.coordinator_address or f'the coordinator {_cluster_env()} names'
  count = cfg.num_processes or 'the launched'
  timeout = cfg.init_timeout_s
  done = threading.Event()

  def give_up():
    if not done.wait(timeout):
      sys.stderr.write(
          f'error: distributed start-up did not finish in {timeout:g}s: {count} processes '
          f'must connect to {where} (is the address reachable from every host, and were '
          f'exactly {count} processes launched?)\n')
      sys.stderr.flush()
      os._exit(exits.ERROR)   # the runtime's own timeout would abort with a C++ trace

  threading.Thread(target=give_up, daemon=True).start()
  try:
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address or None,
        num_processes=cfg.num_processes or None,
        process_id=cfg.process_id if cfg.process_id >= 0 else None,
        # Longer than the watchdog above, so the watchdog speaks first.
        initialization_timeout=int(timeout) + 60)
    jax.devices()   # the global topology exchange also waits for every process
  except (ValueError, TypeError, RuntimeError) as e:
    raise ValueError(f'distributed start-up with {where} ({count} processes) failed: '
                     f'{" ".join(str(e).split())}') from e
  finally:
    done.set()
