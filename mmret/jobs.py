"""Job registry: `config.job` -> the function that trains and evaluates it.

Each job is `train_and_evaluate(config, workdir) -> dict[str, float]`; `run` validates the
config first, writes `<workdir>/results.json` and returns the results.
"""

import importlib
import json
import math
import pathlib

import ml_collections

from mmret.config import ConfigError, validate

# Imported lazily so that a job's heavy dependencies load only when it runs.
JOBS = {
    'pretrain': 'mmret.train.pretrain:train_and_evaluate',
}


def get_job(name: str):
  if name not in JOBS:
    raise ConfigError(f'config.job={name!r}: unknown job; choose from {sorted(JOBS)}.')
  module, fn = JOBS[name].split(':')
  return getattr(importlib.import_module(module), fn)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
  job = get_job(config.job)
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  results = job(config, workdir)
  write_results(workdir / 'results.json', results)
  return results


def write_results(path: pathlib.Path, results: dict[str, float]) -> None:
  flat = {k: (float(v) if isinstance(v, float) else v) for k, v in sorted(results.items())}
  path.write_text(json.dumps(flat, indent=2, sort_keys=True) + '\n')


def format_results(results: dict[str, float], title: str = 'results') -> str:
  """A readable two-column table of the results, grouped by key prefix."""
  width = max([len(k) for k in results] + [10])
  lines = [title, '-' * (width + 14)]
  for key in sorted(results):
    value = results[key]
    if isinstance(value, float):
      text = f'{value:.4f}' if math.isfinite(value) and abs(value) < 1e5 else f'{value:.4g}'
    else:
      text = str(value)
    lines.append(f'{key:<{width}}  {text:>12}')
  return '\n'.join(lines)
