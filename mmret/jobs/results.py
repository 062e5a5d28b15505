"""results.json and the summary table a job prints.

Non-finite values (NaN is a legitimate eval value, e.g. an AUC with one class) are kept as
floats here; `write_results` sorts the keys.
"""

import json
import math
import pathlib
import re


def write_results(path: pathlib.Path, results: dict[str, float]) -> None:
  flat = {k: (float(v) if isinstance(v, float) else v) for k, v in sorted(results.items())}
  path.write_text(json.dumps(flat, indent=2, sort_keys=True) + '\n')


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
  return '\n'.join(lines)
