"""bench/gpu_report.py: what bench/gpu.sh wrote -> one JSON and the table, ratios computed."""

import importlib.util
import json
import pathlib

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / 'bench' / 'gpu_report.py'


def _report_module():
  spec = importlib.util.spec_from_file_location('bench_gpu_report', _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _mmret(ex_s):
  return {'compile_seconds': 41.0, 'step_ms_device': 1024 / ex_s * 1e3, 'examples_per_sec':
          ex_s, 'examples_per_sec_device': ex_s, 'utilisation': 0.4, 'padding_fraction': 0.3}


def test_collects_runs_ratios_and_failures(tmp_path):
  (tmp_path / 'two_tower_1024.json').write_text(json.dumps(_mmret(11_000.0)))
  (tmp_path / 'two_tower_1024.status').write_text('exit 0\n')
  (tmp_path / 'peer_1024.json').write_text(json.dumps({'compiled': {
      'step_ms': 132.8, 'examples_per_sec': 7_709.0, 'utilisation': 0.322,
      'warmup_seconds': 50.0}}))
  (tmp_path / 'base_256.status').write_text('exit 124\n')  # timed out: no JSON
  (tmp_path / 'recall.json').write_text(json.dumps({'rows': [
      {'item_rows': 1e8, 'median_ms': 0.75, 'fed_prefetch_ms': 0.9, 'host_batch_ms': 2.4,
       'item_state_gib': 49.9}]}))
  report = _report_module().main([str(tmp_path), '--have_torch', '1', '--seconds', '400'])
  assert report['ratio_vs_peer'] == {1024: pytest.approx(11_000 / 7_709)}
  assert json.loads((tmp_path / 'gpu.json').read_text())['total_seconds'] == 400
  table = (tmp_path / 'gpu.md').read_text()
  assert '| mmret two_tower | 1024 | 41.0 |' in table and '| 1.43 |' in table
  assert '| torch peer compiled | 1024 |' in table and '| 1e+08 | 0.75 |' in table
  assert 'Not completed: base_256 (exit 124)' in table
