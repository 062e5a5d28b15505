r"""Collects what bench/gpu.sh wrote in OUT_DIR into OUT_DIR/gpu.json and a table OUT_DIR/gpu.md.

  python bench/gpu_report.py OUT_DIR [--have_torch 1] [--seconds 431]

Reads two_tower_<B>.json, peer_<B>.json, base_<B>.json, recall.json and each step's .status
(a step that timed out or failed is listed with its exit status, never left out). The headline
is mmret's two-tower examples/s over the peer's compiled examples/s at the same batch size.
"""

import argparse
import json
import pathlib
import re


def _load(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def collect(out: pathlib.Path) -> dict:
  """{'steps': {name: status}, 'two_tower': {B: json}, 'peer': {B: json}, 'base': {B: json},
  'recall': json, 'ratio_vs_peer': {B: mmret ex/s / peer compiled ex/s}}."""
  report = {'steps': {}, 'two_tower': {}, 'peer': {}, 'base': {}, 'recall': None,
            'ratio_vs_peer': {}}
  for status in sorted(out.glob('*.status')):
    report['steps'][status.stem] = status.read_text().strip()
  for path in sorted(out.glob('*.json')):
    match = re.fullmatch(r'(two_tower|peer|base)_(\d+)', path.stem)
    if match:
      report[match.group(1)][int(match.group(2))] = _load(path)
  report['recall'] = _load(out / 'recall.json')
  for b, mine in report['two_tower'].items():
    peer = report['peer'].get(b)
    if mine and peer and 'compiled' in peer:
      report['ratio_vs_peer'][b] = mine['examples_per_sec'] / peer['compiled']['examples_per_sec']
  return report


def _fmt(value, spec='.1f'):
  return '-' if value is None else format(value, spec)


def table(report: dict) -> str:
  """The markdown table of docs/PERFORMANCE.md."""
  lines = ['| run | batch | compile s | step ms (device) | examples/s | utilisation | '
           'padding | vs peer |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for kind in ('two_tower', 'base'):
    for b, r in sorted(report[kind].items(), reverse=True):
      if not r:
        continue
      lines.append(
          f"| mmret {kind} | {b} | {_fmt(r['compile_seconds'])} | {_fmt(r['step_ms_device'])} "
          f"| {_fmt(r['examples_per_sec_device'], '.0f')} | {_fmt(r['utilisation'], '.3f')} | "
          f"{_fmt(r['padding_fraction'], '.2f')} | "
          f"{_fmt(report['ratio_vs_peer'].get(b) if kind == 'two_tower' else None, '.2f')} |")
  for b, r in sorted(report['peer'].items(), reverse=True):
    for mode in ('compiled', 'eager'):
      if r and mode in r:
        m = r[mode]
        lines.append(f"| torch peer {mode} | {b} | {_fmt(m['warmup_seconds'])} | "
                     f"{_fmt(m['step_ms'])} | {_fmt(m['examples_per_sec'], '.0f')} | "
                     f"{_fmt(m['utilisation'], '.3f')} | - | 1.00 |")
  recall = report['recall']
  if recall:
    lines += ['', '| recall item rows | device step ms | fed step ms (prefetch) | host batch ms '
              '| item state GiB |', '| --- | --- | --- | --- | --- |']
    for row in recall['rows']:
      lines.append(f"| {row['item_rows']:.0e} | {_fmt(row['median_ms'], '.2f')} | "
                   f"{_fmt(row.get('fed_prefetch_ms'), '.2f')} | "
                   f"{_fmt(row['host_batch_ms'], '.2f')} | {_fmt(row['item_state_gib'], '.2f')} |")
  failed = {k: v for k, v in report['steps'].items() if v != 'exit 0'}
  if failed:
    lines += ['', 'Not completed: ' + ', '.join(f'{k} ({v})' for k, v in failed.items())]
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('out')
  parser.add_argument('--have_torch', type=int, default=0)
  parser.add_argument('--seconds', type=float, default=None, help='wall time of gpu.sh')
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  report = collect(out)
  report['have_torch'] = bool(args.have_torch)
  report['total_seconds'] = args.seconds
  (out / 'gpu.json').write_text(json.dumps(report, indent=1) + '\n')
  text = table(report)
  (out / 'gpu.md').write_text(text)
  print(text)
  return report


if __name__ == '__main__':
  main()
