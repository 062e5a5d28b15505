"""Multi-process start-up: `jax.distributed.initialize` when the job has more than one process.

Explicit arguments (the CLI's --coordinator_address / --num_processes / --process_id) win.
Without them, the usual cluster environments are detected and left to JAX's own auto-detection
(`jax.distributed.initialize()` with no arguments reads them):

  SLURM       SLURM_NTASKS > 1 (srun)
  Open MPI    OMPI_COMM_WORLD_SIZE > 1 (mpirun)
  TPU VM pod  TPU_WORKER_HOSTNAMES lists more than one host
  explicit    JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID

A single process (a laptop, one GPU host driving all its GPUs) initialises nothing.
"""

import os
from collections.abc import Mapping

import numpy as np

# JAX is imported in the functions that use it: the CLI asks `cluster_size` before loading JAX
# (seconds), to refuse a busy workdir at once (mmret/launch.py).

PROCESS_SHARDING = ('per_process', 'global_batch')  # config.data.process_sharding


def cluster_size(env: Mapping[str, str]) -> int:
  """Number of processes the environment says this job has (1 when it says nothing)."""
  for var in ('JAX_NUM_PROCESSES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if env.get(var, '').strip().isdigit():
      return int(env[var])
  hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  return max(len(hosts), 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env: Mapping[str, str] | None = None) -> bool:
  """Initialises jax.distributed if this is a multi-process job; returns whether it did.

  Must run before anything touches a JAX device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ if env is None else env
  explicit = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  if explicit:
    n = num_processes if num_processes is not None else int(env.get('JAX_NUM_PROCESSES', '1'))
    pid = process_id if process_id is not None else int(env.get('JAX_PROCESS_ID', '0'))
    if n <= 1:
      return False
    if not 0 <= pid < n:
      raise ValueError(f'process_id {pid} is not in [0, {n}).')
    jax.distributed.initialize(coordinator_address=explicit, num_processes=n, process_id=pid)
    return True
  if cluster_size(env) > 1:
    jax.distributed.initialize()  # JAX reads SLURM / Open MPI / TPU metadata itself
    return True
  return False


def input_shard(process_sharding: str) -> tuple[int, int, bool]:
  """(shard_count, shard_index, full_batches) of this process's training input.

  'per_process': each process reads its own shard (rows index::count) and batch/count rows of
  every step. 'global_batch': every process reads the whole global batch and keeps its devices'
  rows of it (`full_batches`), so the run does not depend on the number of processes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if process_sharding == 'global_batch':
    return 1, 0, True
  return jax.process_count(), jax.process_index(), False


def agree_max(values):
  """int64 [K]: the element-wise maximum of `values` over all processes (itself with one
  process, without touching a device); e.g. the batch lengths processes must share
  (mmret/data/length_buckets.py)."""
  import jax  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.int64)
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(values)).max(axis=0)
