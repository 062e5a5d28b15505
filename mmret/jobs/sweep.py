"""A sweep: one job run per (row, seed), each row a set of config overrides, then mean ± std.

Declared in a config file (configs/engage.py:ablation is the source's Table 1):

  c.sweep.rows = ('contrastive', 'context')        # rows to run, in order; () = no sweep
  c.sweep.overrides = ConfigDict({                 # row -> nested overrides of the base config
      'contrastive': {'model': {'context_token': False}},
      'context': {'model': {'context_token': True}}})
  c.sweep.order = ('contrastive', 'context')   # every row, in order (ConfigDict sorts keys)
  c.sweep.cumulative = True     # a row adds its overrides to those of the rows before it
  c.sweep.seeds = (0, 1, 2)
  c.sweep.tables = (('engagement_auc', 'relevance_auc'),)   # metrics of the printed tables
  c.sweep.compilation_cache = True   # seeds of a row compile the same programs: compile once

An override value of None means "the base config's value" (a later row restoring what an
earlier one changed). Each run is a whole job in `<workdir>/<row>/seed<k>`, run by the `run`
function passed in (mmret.jobs.run); a run whose results.json exists is read, not run again, so a
killed sweep resumes (and a run killed mid-training resumes from its own checkpoint).
"""

from collections.abc import Callable, Sequence
import copy
import pathlib
import time

import jax
import ml_collections
import numpy as np

from mmret.config import ConfigError
from mmret.config import apply_overrides
from mmret.jobs import results as results_lib
from mmret.train.progress import info


def flatten(node: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """Nested overrides -> {'dotted.key': value}."""
  out = {}
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Every row is declared, every override names an existing key, seeds are given."""
  s = config.sweep
  if set(s.order) != set(s.overrides.keys()):
    raise ConfigError(f'config key sweep.order={tuple(s.order)} must list every row of '
                      f'sweep.overrides {tuple(s.overrides.keys())} once.')
  for row in s.rows:
    if row not in s.order:
      raise ConfigError(f'config key sweep.rows: unknown row {row!r}; choose from '
                        f'{tuple(s.order)}.')
  for row, overrides in s.overrides.items():
    for key in flatten(overrides):
      try:
        _get(config, key)
      except (KeyError, AttributeError):
        raise ConfigError(f'config key sweep.overrides.{row}: {key!r} is not a config key.'
                          ) from None
  if s.rows and not s.seeds:
    raise ConfigError('config key sweep.seeds: at least one seed is needed.')


def row_config(config: ml_collections.ConfigDict, row: str, seed: int
               ) -> ml_collections.ConfigDict:
  """The config of one row and seed (the rows up to `row` applied when cumulative), with
  the sweep itself switched off."""
  s = config.sweep
  order = list(s.order)
  applied = order[:order.index(row) + 1] if s.cumulative else [row]
  c = copy.deepcopy(config)
  for name in applied:
    for key, value in flatten(s.overrides[name]).items():
      apply_overrides(c, {key: _get(config, key) if value is None else value})
  apply_overrides(c, {'seed': seed, 'sweep.rows': (), 'log_prefix': f'{row}/seed{seed} '})
  return c


def aggregate(per_run: dict[str, list[dict[str, float]]]) -> dict[str, float]:
  """{row: [results per seed]} -> {'<row>/<metric>': mean, '<row>/<metric>/std': std}.

  std is the sample standard deviation (ddof=1) over seeds; 0 with a single seed.
  """
  out = {}
  for row, runs in per_run.items():
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    for key in keys:
      if key.startswith('perf/') or key.startswith('scann_neighbour'):
        continue
      values = np.array([r[key] for r in runs], np.float64)
      out[f'{row}/{key}'] = float(np.mean(values))
      out[f'{row}/{key}/std'] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out[f'{row}/seeds'] = float(len(runs))
  return out


def _is_count(metric: str) -> bool:
  """Steps and seconds are printed as they are; every other metric is a fraction (x 100)."""
  return metric.endswith(('step', 'steps', 'seconds'))


def format_table(results: dict[str, float], rows: Sequence[str], metrics: Sequence[str]) -> str:
  """One line per row, mean ± std of each metric: x 100, except steps and seconds."""
  width = max(18, *(len(m) + 2 for m in metrics))
  head = f'{"row":<20}' + ''.join(f'{m:>{width}}' for m in metrics)
  lines = [head, '-' * len(head)]
  for row in rows:
    cells = []
    for m in metrics:
      mean, std = results.get(f'{row}/{m}'), results.get(f'{row}/{m}/std')
      scale = 1 if _is_count(m) else 100
      cells.append('n/a' if mean is None else f'{scale * mean:.2f} ± {scale * std:.2f}')
    lines.append(f'{row:<20}' + ''.join(f'{cell:>{width}}' for cell in cells))
  return '\n'.join(lines)


def run_sweep(config: ml_collections.ConfigDict, workdir: pathlib.Path,
              run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict[str, float]]
              ) -> dict[str, float]:
  """Runs config.sweep.rows x config.sweep.seeds with `run`; returns the aggregate."""
  s = config.sweep
  if s.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', str(workdir / 'xla_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  rows = tuple(s.rows)
  per_run: dict[str, list[dict[str, float]]] = {}
  t0 = time.perf_counter()
  for row in rows:
    for seed in s.seeds:
      run_dir = workdir / row / f'seed{seed}'
      done = run_dir / 'results.json'
      if done.is_file():
        info(f'sweep: {row}/seed{seed} done before, reading {done}')
        results = results_lib.read_results(done)
      else:
        info(f'sweep: {row}/seed{seed} ({time.perf_counter() - t0:.0f}s so far)')
        results = run(row_config(config, row, seed), run_dir)
      per_run.setdefault(row, []).append(results)
  out = aggregate(per_run)
  out['perf/sweep_seconds'] = time.perf_counter() - t0
  info(f'\n{s.title} (x 100 but steps and seconds, mean ± std over seeds {tuple(s.seeds)}):')
  for metrics in s.tables:
    info(format_table(out, rows, tuple(metrics)) + '\n')
  return out
