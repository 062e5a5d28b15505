"""bench/ann_search.py at toy sizes: the JSON it promises, and its data distribution."""

import importlib.util
import json
import pathlib

import numpy as np

_BENCH = pathlib.Path(__file__).resolve().parents[1] / 'bench' / 'ann_search.py'


def _load_bench():
  spec = importlib.util.spec_from_file_location('bench_ann_search', _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_clustered_vectors_follow_the_stated_distribution():
  bench = _load_bench()
  rng = np.random.default_rng(0)
  d = 256
  centres = rng.standard_normal((2, d)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = bench.clustered(rng, 4000, centres, spread=1.0, chunk=1000)
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
  # Spread 1: noise of the centre's norm, so cos(x, own centre) ~ 1 / sqrt(2) ~ 0.71.
  own = np.max(x @ centres.T, axis=1)
  assert abs(float(np.mean(own)) - 2 ** -0.5) < 0.02


def test_json_keys_and_the_exhaustive_flag(tmp_path):
  bench = _load_bench()
  out = tmp_path / 'small.json'
  small = bench.main(['--items', '500', '--queries', '32', '--dim', '8', '--k', '10',
                      '--clusters', '20', '--repeats', '1', '--out', str(out)])
  assert json.loads(out.read_text()) == small
  for key in ('neighbour_recall@10', 'scann_qps', 'exact_qps', 'build_seconds', 'device'):
    assert key in small, key
  # 500 items: under search.EXHAUSTIVE_BELOW, so ScaNN is exact search and says so.
  assert small['exhaustive'] == 1 and small['neighbour_recall@10'] == 1.0
  big = bench.main(['--items', '12000', '--queries', '32', '--dim', '8', '--k', '10',
                    '--clusters', '50', '--repeats', '1'])
  assert big['exhaustive'] == 0 and big['scann_params']['reorder'] == 100
  assert 0.5 <= big['neighbour_recall@10'] <= 1.0 and big['scann_qps'] > 0
