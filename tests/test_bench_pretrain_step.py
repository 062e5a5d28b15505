"""bench/pretrain_step.py on the tiny config: the JSON it promises, with sane values."""

import importlib.util
import json
import math
import pathlib

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / 'bench' / 'pretrain_step.py'


def _load_bench():
  spec = importlib.util.spec_from_file_location('bench_pretrain_step', _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_overrides_are_parsed_as_python_literals_or_strings():
  _, overrides = _load_bench().parse_args([
      '--batch_size', '4', '--config.model.scan=True', '--config.data.tokenizer=train',
      '--config.optim.lr=0.5', '--config.eval.ks=(1, 2)'])
  assert overrides == {'model.scan': True, 'data.tokenizer': 'train', 'optim.lr': 0.5,
                       'eval.ks': (1, 2), 'train.batch_size': 4}
  with pytest.raises(SystemExit):
    _load_bench().parse_args(['--scan'])


def test_padding_fraction_counts_query_and_title_slots():
  batch = {'query_mask': [[1, 1, 0, 0]], 'title_mask': [[1, 0, 0, 0, 0, 0]]}
  assert _load_bench().padding_fraction([batch, batch]) == pytest.approx(1 - 6 / 20)


def test_tiny_config_reports_every_number(tmp_path):
  """Both layer layouts: the FLOP count must not depend on whether the stack is scanned."""
  results = {}
  for scan in (False, True):
    out = tmp_path / f'result_{scan}.json'
    returned = _load_bench().main([
        '--config', 'configs/pretrain.py:tiny', '--batch_size', '8', '--steps', '2',
        '--pipeline_batches', '2', '--peak_tflops', '1.0', '--out', str(out),
        f'--config.model.scan={scan}', f'--config.data.cache_dir={tmp_path / "cache"}'])
    results[scan] = result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result['batch_size'] == 8 and result['device'].endswith('cpu')
    positive = ('setup_seconds', 'lower_seconds', 'compile_seconds', 'compile_cpu_seconds',
                'step_ms_fed',
                'step_ms_device', 'examples_per_sec', 'xla_flops_per_step', 'xla_flops_compiled',
                'utilisation', 'pipeline_examples_per_sec')
    for key in positive:
      assert math.isfinite(result[key]) and result[key] > 0, key
    assert result['compile_seconds'] >= result['lower_seconds']
    assert result['examples_per_sec'] == pytest.approx(8 / result['step_ms_fed'] * 1e3)
    # SynthShop queries and titles are shorter than the tiny config's 12 / 24 slots.
    assert 0.0 < result['padding_fraction'] < 1.0
    assert math.isfinite(result['loss'])
  # The same maths: the same count, although the compiled scan counts its loop body once.
  assert results[True]['xla_flops_per_step'] == pytest.approx(
      results[False]['xla_flops_per_step'], rel=1e-3)
  assert results[True]['xla_flops_compiled'] < results[False]['xla_flops_compiled']


def test_length_buckets_cut_padding_and_are_compiled_apart(tmp_path):
  """data.length_multiple=4 on tiny: fewer slots, less padding, fewer FLOPs than the fixed
  12 + 24 slots, each batch shape compiled before the timed pass or counted."""
  bench = _load_bench()
  fixed = bench.main(['--config', 'configs/pretrain.py:tiny', '--batch_size', '8', '--steps', '3',
                      '--pipeline_batches', '1', f'--config.data.cache_dir={tmp_path / "c"}'])
  cut = bench.main(['--config', 'configs/pretrain.py:tiny', '--batch_size', '8', '--steps', '3',
                    '--pipeline_batches', '1', f'--config.data.cache_dir={tmp_path / "c"}',
                    '--config.data.length_multiple=4'])
  assert fixed['batch_shapes'] == ['12x24'] and fixed['bucket_compile_seconds'] == []
  assert cut['length_multiple'] == 4 and '12x24' not in cut['batch_shapes']
  for shape in cut['batch_shapes']:
    query, title = map(int, shape.split('x'))
    assert query % 4 == 0 and title % 4 == 0 and query <= 12 and title <= 24
  assert len(cut['bucket_compile_seconds']) + cut['compiles_during_fed'] == len(
      cut['batch_shapes']) - 1
  assert cut['padding_fraction'] < fixed['padding_fraction']
  assert cut['xla_flops_per_step'] < fixed['xla_flops_per_step']
  assert math.isfinite(cut['loss'])
