"""The jobs: `config.job` -> the package that trains and evaluates it.

  pretrain   stage 1: multimodal pre-training for retrieval (DESIGN.md §1)   mmret/jobs/pretrain
  recall     stage 2: ID tables fused with stage-1 vectors (§2-3)            mmret/jobs/recall
  engage     Que2Engage: engagement-aware multitask EBR (§4)                  mmret/jobs/engage

Each job package has `job.train_and_evaluate(config, workdir, ...) -> dict[str, float]` and
`config.validate(config)`. `run(config, workdir)` validates the config (generic checks, then the
job's), writes `<workdir>/config.json`, runs the job (or, when `config.sweep.rows` is set, the
sweep of mmret/jobs/sweep.py over it), and writes `<workdir>/results.json`.

Job modules are imported lazily (a job's heavy dependencies load only when it runs) and never
import this package: what a job needs from the registry, running another job (the recall job's
stage 1, a sweep's rows), is passed to it as a function.
"""

import contextlib
import importlib
import pathlib
import time

import ml_collections

from mmret import files
from mmret.config import ConfigError
from mmret.config import checks
from mmret.config import validate as validate_generic
from mmret.jobs import results as results_lib
from mmret.jobs import workdir as workdir_lib
from mmret.train import distributed
# sweep, optimizer and state (JAX, optax, Flax) are imported where they are used: the CLI
# imports this package's workdir module before JAX, to refuse a busy workdir at once.

JOBS = ('pretrain', 'recall', 'engage')
# Jobs that run other jobs get `run_job=run` (the recall job runs its missing stage 1).
_RUNS_JOBS = ('recall',)


def _module(name: str, part: str):
  if name not in JOBS:
    raise ConfigError(f'config.job={name!r}: unknown job; choose from {sorted(JOBS)}.')
  return importlib.import_module(f'mmret.jobs.{name}.{part}')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """The generic checks and the job's own; raises ConfigError naming the key."""
  # pylint: disable=g-import-not-at-top  (see the imports above)
  from mmret.jobs import sweep
  from mmret.train import optimizer
  from mmret.train import state
  job_config = _module(config.job, 'config')
  checks.check_choices(config, {'train.rng_impl': state.RNG_IMPLS, 'optim.name': optimizer.NAMES,
                                'data.process_sharding': distributed.PROCESS_SHARDING})
  validate_generic(config, num_devices)
  job_config.validate(config, num_devices)
  if config.get('sweep') is not None:
    sweep.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        allow_config_change: bool = False) -> dict[str, float]:
  """Runs `config.job` (or its sweep) in `workdir`; returns and writes its results.

  The workdir is locked for the whole job (mmret/jobs/workdir.py); a workdir holding a run of
  another config is refused unless `allow_config_change`; config.json is written (atomically)
  only once the config is accepted, and results.json only when the job has finished.
  """
  # pylint: disable=g-import-not-at-top
  import jax  # after jax.distributed.initialize
  from mmret.jobs import sweep
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  workdir_lib.ensure_writable(workdir)
  primary = jax.process_index() == 0  # every process computes the same results; one writes
  with workdir_lib.lock(workdir) if primary else contextlib.nullcontext():
    # The job's modules (seconds to import) load once the workdir is ours: a busy one is
    # refused first.
    job = _module(config.job, 'job')
    validate(config)
    workdir_lib.check_resume(workdir, config, allow_config_change)
    if primary:
      files.write_text_atomic(workdir / 'config.json',
                                    config.to_json_best_effort(indent=2, sort_keys=True))
    previous = workdir / 'results.json'
    previous = results_lib.read_results(previous) if previous.is_file() else {}
    if config.get('sweep') is not None and config.sweep.rows:
      results = sweep.run_sweep(config, workdir, run)
    else:
      extra = {'run_job': run} if config.job in _RUNS_JOBS else {}
      results = job.train_and_evaluate(config, workdir, **extra)
      results = results_lib.keep_train_keys(results, previous)
      results['perf/total_seconds'] = time.perf_counter() - t_start
    if primary:
      results_lib.write_results(workdir / 'results.json', results)
  return results


format_results = results_lib.format_results
write_results = results_lib.write_results
