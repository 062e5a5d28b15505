"""bench/eval_inputs.py runs on CPU on the BYOD fixture and reports what it says it does."""

import importlib.util
import json
import pathlib
import shutil

import numpy as np

from mmret.data import evalset
from mmret.data import records
from mmret.data import tfds_builder
from mmret.data import tokenizer as tokenizer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / 'tests' / 'fixtures' / 'byod_small'


def _bench():
  spec = importlib.util.spec_from_file_location('eval_inputs', ROOT / 'bench' / 'eval_inputs.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_eval_inputs_bench(tmp_path):
  src = tmp_path / 'src'
  shutil.copytree(FIXTURE, src)
  builder = tfds_builder.prepare(src, tmp_path / 'tfds', image_size=4)
  dataset = records.load_dataset(src)
  tok = tokenizer_lib.Tokenizer.train([it.title for it in dataset.items] * 2, vocab_size=100)
  tok_dir = tok.save(tmp_path / 'tok')
  out = tmp_path / 'r.json'
  result = _bench().main(['--source', str(src), '--builder_dir', str(builder.data_dir),
                          '--batch_size', '2', '--batches', '2', '--tokenizer', str(tok_dir),
                          '--k', '3', '--out', str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  expected = evalset.build_eval_set(dataset)
  assert result['items'] == len(dataset.items) and result['eval_queries'] == len(expected.queries)
  assert result['ideal_gains_sum'] == float(np.sum(expected.ideal_gains(3)))
  # One warm-up batch, then two timed: six items in batches of two.
  assert result['catalog_batches'] == 2 and result['catalog_items_per_sec'] > 0
  for key in ('load_seconds', 'build_eval_set_seconds', 'ideal_gains_seconds'):
    assert result[key] >= 0
