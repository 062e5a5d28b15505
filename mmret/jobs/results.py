"""results.json and the summary table a job prints.

results.json is strict JSON: a non-finite value (NaN is a legitimate eval value, e.g. an AUC
over one class) is written as null and read back as NaN; keys are sorted; the file is replaced
atomically, so a failing run never leaves half of one.
"""

import json
import math
import pathlib
import re

from mmret import files

# Keys of what training measured; a rerun that trains nothing keeps them from the last run.
_TRAIN_KEY = re.compile(r'(^|/)(loss|train)/')


def write_results(path: pathlib.Path, results: dict[str, float]) -> None:
  flat = {}
  for key, value in sorted(results.items()):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      value = float(value) if math.isfinite(value) else None
    flat[key] = value
  files.write_text_atomic(path, json.dumps(flat, indent=2, sort_keys=True,
                                                 allow_nan=False) + '\n')


def read_results(path: pathlib.Path) -> dict[str, float]:
  """results.json -> dict, null read back as NaN."""
  return {k: (math.nan if v is None else v) for k, v in json.loads(path.read_text()).items()}


def keep_train_keys(results: dict[str, float], previous: dict[str, float]) -> dict[str, float]:
  """A rerun of a finished job evaluates without training: the last run's loss/* and train/*
  keys (per variant too, e.g. gate_add/loss/total) are carried over where the rerun has none."""
  for key, value in previous.items():
    if _TRAIN_KEY.search(key) and key not in results:
      results[key] = value
  return results


_AT_K = re.compile(r'^(?:(?P<group>.+)/)?(?P<metric>[a-z_]+)@(?P<k>\d+)(?P<suffix>/[a-z_]+)?$')


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4f}' if math.isfinite(value) and abs(value) < 1e5 else f'{value:.4g}'
  return str(value)


def format_results(results: dict[str, float], title: str = 'results') -> str:
  """A readable summary: metrics at K as a table (rows: model and metric, columns: K), then the
  other results (losses, throughput) as a two-column list."""
  table: dict[tuple[str, str], dict[int, float]] = {}
  rest = {}
  for key, value in results.items():
    m = _AT_K.match(key)
    if m is None:
      rest[key] = value
      continue
    row = (m['group'] or 'model', m['metric'] + (m['suffix'] or ''))
    table.setdefault(row, {})[int(m['k'])] = value
  lines = [title]
  if table:
    ks = sorted({k for cols in table.values() for k in cols})
    groups = sorted({g for g, _ in table}, key=lambda g: (g != 'model', g))
    w_group = max(len(g) for g in groups)
    w_metric = max(len(metric) for _, metric in table)
    header = f'{"":<{w_group}}  {"metric":<{w_metric}}' + ''.join(f'{"@" + str(k):>9}' for k in ks)
    lines += ['=' * len(header), header, '-' * len(header)]
    for group in groups:
      for g, metric in sorted(r for r in table if r[0] == group):
        cols = table[(g, metric)]
        cells = ''.join(f'{_fmt(cols[k]) if k in cols else "":>9}' for k in ks)
        lines.append(f'{g:<{w_group}}  {metric:<{w_metric}}{cells}')
  if rest:
    width = max(len(k) for k in rest)
    lines += ['-' * (width + 14)]
    lines += [f'{key:<{width}}  {_fmt(rest[key]):>12}' for key in sorted(rest)]
  exhaustive = sorted(k[:-len('search/exhaustive')] or 'model' for k, v in results.items()
                      if k.endswith('search/exhaustive') and v == 1)
  if exhaustive:
    lines.append(f'note: ScaNN search was exhaustive ({", ".join(exhaustive)}): the catalog is '
                 'under 10,000 items or K >= N, so ScaNN figures are exact search, not ANN.')
  num_items = results.get('search/num_items')
  whole = [k for k in (ks if table else []) if num_items and k >= num_items]
  if whole:
    lines.append(f'note: K >= the catalog ({int(num_items):,} items) at '
                 f'{", ".join(f"@{k}" for k in whole)}: recall there counts every item and is '
                 '1.0 by construction, not a measurement.')
  return '\n'.join(lines)
