"""Use a trained recall (stage-2) model (mmret/serve/recall.py, mmret/jobs/recall/model_files.py):
one tiny recall run with two variants, read back, checked against the job's own vectors and
results, unseen IDs through their hashed buckets, exported and searched with the CLI."""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmret import jobs
from mmret import serve
from mmret.config import ConfigError
from mmret.config import load_config
from mmret.evaluate import retrieval
from mmret.serve.recall import RecallServeModel
from mmret.towers import recall as recall_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ('gate_add', 'mm_only')


@pytest.fixture(scope='module')
def recall(tmp_path_factory):
  cache = tmp_path_factory.mktemp('recall_serve_cache')
  workdir = tmp_path_factory.mktemp('recall_serve')
  config = load_config('configs/recall.py:tiny', {'stage1.data.cache_dir': str(cache),
                                                  'variants': VARIANTS})
  results = jobs.run(config, workdir)
  from mmret.data import prepare  # pylint: disable=g-import-not-at-top
  return workdir, results, prepare.prepare(config.stage1.data), config


@pytest.mark.parametrize('variant', VARIANTS)
def test_loaded_variant_reproduces_the_jobs_vectors_and_recall(recall, variant):
  workdir, _, data, config = recall
  model = serve.Model.load(workdir, variant=variant)
  assert isinstance(model, RecallServeModel) and model.fusion == variant
  assert model.item_ids == [it.item_id for it in data.dataset.items]
  # Items from their BYOD records (stage-1 vectors recomputed by the copied stage-1 model, ID
  # rows from the saved vocabulary) = the fused vectors the job's evaluation searched.
  items = model.encode_items(data.dataset.items)
  np.testing.assert_allclose(items, model.item_vectors, atol=2e-5)
  queries = model.encode_queries(data.eval_set.queries)
  assert model.eval_queries == list(data.eval_set.queries)
  np.testing.assert_allclose(queries, model.eval_query_vectors, atol=2e-5)
  stored = json.loads((workdir / 'results.json').read_text())
  ks = tuple(config.eval.ks)
  again = retrieval.RetrievalEvaluator(data.eval_set, ks=ks, scann=config.eval.scann).run(
      queries, model.item_vectors).metrics
  for k in ks:
    for key in (f'recall@{k}', f'recall@{k}/exact', f'relevance@{k}'):
      assert again[key] == pytest.approx(stored[f'{variant}/{key}'], abs=1e-9), key


def _bucket(key, known, buckets, salt):
  """The hashed row of an unseen ID, computed here from the documented layout."""
  digest = hashlib.blake2b(f'{salt}{key}'.encode(), digest_size=8).digest()
  return len(known) + 1 + int.from_bytes(digest, 'little') % buckets


def test_unseen_query_and_item_go_to_their_hashed_buckets(recall):
  workdir, _, data, _ = recall
  model = serve.Model.load(workdir / 'gate_add' / 'model')
  ids, variables = model.ids, model.variables
  module = recall_model.RecallModel(model.config.model, num_categories=ids['num_categories'])
  query = 'a query no one typed zz9'
  assert query not in ids['query_known']
  row = _bucket(query, ids['query_known'], ids['query_buckets'], 'query:')
  assert len(ids['query_known']) < row < model.query_table.shape[0]
  expected = module.apply(variables, model.query_table[row][None],
                          model.stage1.encode_queries([query]),
                          method=recall_model.RecallModel.encode_query)['query_vec']
  np.testing.assert_allclose(model.encode_queries([query]), expected, atol=1e-5)
  # A known train query reads its own row (first in the known list: row 0).
  known = ids['query_known'][0]
  own = module.apply(variables, model.query_table[0][None], model.stage1.encode_queries([known]),
                     method=recall_model.RecallModel.encode_query)['query_vec']
  np.testing.assert_allclose(model.encode_queries([known]), own, atol=1e-5)

  source = data.dataset.items[0]
  new = dataclasses.replace(source, item_id='brand-new-item-42')
  row = _bucket(new.item_id, ids['item_known'], ids['item_buckets'], 'item:')
  category = ids['categories'].index(source.category) + 1 if source.category else 0
  expected = module.apply(variables, model.item_table[row][None],
                          model.stage1.encode_items([source]), np.zeros((1, 3), np.float32),
                          np.array([category], np.int32),
                          method=recall_model.RecallModel.encode_item)['item_vec']
  got = model.encode_items([new])
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Same content, another ID row and no statistics: not the catalog item's vector.
  assert not np.allclose(got, model.item_vectors[0], atol=1e-3)


def _cli(module, *args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_export_and_search_cli_on_a_recall_workdir(recall, tmp_path):
  workdir, _, data, _ = recall
  with pytest.raises(ConfigError, match=r'2 variants \(gate_add, mm_only\); pick one'):
    serve.Model.load(workdir)
  with pytest.raises(ConfigError, match="no model directory for variant 'add'"):
    serve.Model.load(workdir, variant='add')
  partial = tmp_path / 'partial'
  shutil.copytree(workdir / 'gate_add' / 'model', partial)
  (partial / 'recall' / 'item_table.npy').unlink()
  with pytest.raises(ConfigError, match=r'incomplete: recall/item_table\.npy missing'):
    serve.Model.load(partial)
  proc = _cli('mmret.export', workdir, tmp_path / 'amb')
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert 'pick one with variant= (--variant' in proc.stderr
  out = tmp_path / 'serve'
  proc = _cli('mmret.export', workdir, out, '--variant', 'gate_add', '--num_neighbors', 10)
  assert proc.returncode == 0, proc.stderr[-3000:]
  queries = data.eval_set.queries[:3]
  (tmp_path / 'q.txt').write_text('\n'.join(queries) + '\n')
  proc = _cli('mmret.search', out, '--queries', tmp_path / 'q.txt', '--k', 5, '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [x['query'] for x in lines] == list(queries)
  searcher = serve.Searcher.load(out)
  expected = searcher.search(queries, k=5)
  assert [[h['item_id'] for h in x['hits']] for x in lines] == [
      [h.item_id for h in hits] for hits in expected]
  # The scores are the fused inner products of the loaded workdir model.
  model = serve.Model.load(workdir, variant='gate_add')
  q = model.encode_queries(queries)
  position = {item_id: i for i, item_id in enumerate(model.item_ids)}
  for qi, x in enumerate(lines):
    assert len(x['hits']) == 5
    for hit in x['hits']:
      assert hit['score'] == pytest.approx(
          float(q[qi] @ model.item_vectors[position[hit['item_id']]]), abs=1e-4)
