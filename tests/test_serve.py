"""Use what you trained (mmret/serve, mmret/train/model_dir.py): one tiny stage-1 run and one
tiny Que2Engage run, read back from their workdirs, exported, searched, broken on purpose."""

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
from mmret.data import records
from mmret.evaluate import retrieval
from mmret.train import model_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(tmp_path_factory, spec, name):
  cache = tmp_path_factory.mktemp(f'{name}_cache')
  workdir = tmp_path_factory.mktemp(name)
  overrides = {'data.cache_dir': str(cache)}
  if 'pretrain' in spec:
    overrides['eval.baselines'] = ()  # not what these tests are about; saves a minute
  config = load_config(spec, overrides)
  results = jobs.run(config, workdir)
  from mmret.data import prepare  # pylint: disable=g-import-not-at-top
  return workdir, results, prepare.prepare(config.data)


@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
  return _run(tmp_path_factory, 'configs/pretrain.py:tiny', 'stage1')


@pytest.fixture(scope='module')
def engage(tmp_path_factory):
  return _run(tmp_path_factory, 'configs/engage.py:tiny', 'engage')


@pytest.fixture(scope='module')
def served(stage1, tmp_path_factory):
  workdir, _, _ = stage1
  return serve.export(workdir, tmp_path_factory.mktemp('served') / 'serve', num_neighbors=10)


def _recomputed(model, data, ks):
  """The job's retrieval metrics, recomputed from the model directory's vectors."""
  evaluator = retrieval.RetrievalEvaluator(data.eval_set, ks=ks, scann=True)
  return evaluator.run(model.encode_queries(data.eval_set.queries), model.item_vectors).metrics


@pytest.mark.parametrize('run', ['stage1', 'engage'])
def test_loaded_model_reproduces_the_jobs_vectors_and_recall(run, request):
  workdir, results, data = request.getfixturevalue(run)
  model = serve.Model.load(workdir)
  assert model.item_ids == [it.item_id for it in data.dataset.items]
  # Items encoded from the BYOD records (images read and resized here, not from the TFDS
  # cache) equal the vectors the job's evaluation searched.
  items = model.encode_items(data.dataset.items)
  assert items.shape == model.item_vectors.shape
  np.testing.assert_allclose(items, model.item_vectors, atol=2e-5)
  assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
  # Recall@K from the exported vectors and freshly encoded queries = results.json.
  stored = json.loads((workdir / 'results.json').read_text())
  ks = tuple(load_config(f'configs/{"pretrain" if run == "stage1" else "engage"}.py:tiny').eval.ks)
  again = _recomputed(model, data, ks)
  for k in ks:
    for key in (f'recall@{k}', f'recall@{k}/exact', f'relevance@{k}'):
      assert again[key] == pytest.approx(stored[key], abs=1e-9), key
  assert results['recall@10/exact'] == pytest.approx(stored['recall@10/exact'])


def test_model_directory_is_self_contained(stage1, tmp_path):
  workdir, _, data = stage1
  moved = tmp_path / 'elsewhere'
  shutil.copytree(workdir / 'model', moved)  # no cache, no config file, no workdir
  model = serve.Model.load(moved)
  assert model.config.job == 'pretrain' and model.config.model.width == 32
  assert model.tokenizer.vocab_size == data.tokenizer.vocab_size
  np.testing.assert_array_equal(model.encode_queries(['red dress']),
                                serve.Model.load(workdir).encode_queries(['red dress']))


def test_long_queries_are_cut_as_in_training(stage1):
  workdir, _, data = stage1
  model = serve.Model.load(workdir)
  length = model.config.data.query_len
  words = [w for w in ('red', 'blue', 'dress', 'shirt', 'green', 'floral', 'black', 'white')
           if model.tokenizer.tokens(w) == [w]]
  assert words, 'the tiny vocabulary has none of the test words as whole tokens'
  head = ' '.join((words * length)[:length - 2])         # exactly Lq - 2 tokens
  long = head + ' ' + ' '.join(reversed(words * 4))     # then many more
  batch = model.query_batch([long])
  assert batch['query_tokens'].shape == (1, length)
  assert batch['query_tokens'][0, -1] == model.tokenizer.sep_id
  vecs = model.encode_queries([long, head, words[0]])
  np.testing.assert_allclose(vecs[0], vecs[1], atol=1e-6)
  assert not np.allclose(vecs[0], vecs[2], atol=1e-3)


def test_unreadable_image_names_the_record(stage1, tmp_path):
  workdir, _, data = stage1
  model = serve.Model.load(workdir)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not a png')
  good = data.dataset.items[0]
  bad = records.Item(item_id='new-42', title='red floral dress', image=str(broken))
  with pytest.raises(records.DataError, match=r"item 'new-42': unreadable image"):
    model.encode_items([good, bad])
  missing = records.Item(item_id='new-43', title='x', image=str(tmp_path / 'gone.jpg'))
  with pytest.raises(records.DataError, match="item 'new-43'"):
    model.encode_items([missing])
  # A new item without an image or context is fine, and equals itself encoded alone.
  new = records.Item(item_id='new-44', title=good.title)
  both = model.encode_items([good, new])
  np.testing.assert_allclose(both[1], model.encode_items([new])[0], atol=1e-6)


def test_saved_index_returns_the_in_memory_neighbours(stage1, tmp_path):
  workdir, _, data = stage1
  model = serve.Model.load(workdir)
  index = serve.Index.build(model.item_vectors, model.item_ids, num_neighbors=10)
  queries = model.encode_queries(data.eval_set.queries)
  scores, rows = index.search(queries, 10)
  index.save(tmp_path / 'index')
  shutil.move(tmp_path / 'index', tmp_path / 'moved')   # ScaNN's assets are found relatively
  loaded = serve.Index.load(tmp_path / 'moved')
  assert loaded.item_ids == model.item_ids and loaded.num_items == len(model.item_ids)
  scores2, rows2 = loaded.search(queries, 10)
  np.testing.assert_array_equal(rows2, rows)
  np.testing.assert_allclose(scores2, scores, atol=1e-6)
  # And both are the exact top-10 on this small catalog (ScaNN scores it exactly).
  exact = np.argsort(-(queries @ model.item_vectors.T), axis=1, kind='stable')[:, :10]
  assert (rows == exact).mean() > 0.99


def test_portable_query_tower_round_trips(stage1, served):
  workdir, _, data = stage1
  model = serve.Model.load(workdir)
  tower = serve.PortableQueryTower.load(served)
  for texts in (['red floral dress'], list(data.eval_set.queries[:5])):  # batch is symbolic
    np.testing.assert_allclose(tower.encode(texts), model.encode_queries(texts), atol=1e-5)


def test_searcher_hits(stage1, served):
  workdir, _, data = stage1
  searcher = serve.Searcher.load(served)
  query = data.eval_set.queries[0]
  hits = searcher.search([query], k=5)[0]
  model = serve.Model.load(workdir)
  scores = model.item_vectors @ model.encode_queries([query])[0]
  top = np.argsort(-scores, kind='stable')[:5]
  assert [h.item_id for h in hits] == [model.item_ids[i] for i in top]
  assert [h.title for h in hits] == [data.dataset.items[i].title for i in top]
  np.testing.assert_allclose([h.score for h in hits], scores[top], atol=1e-5)


def test_bad_directories_are_one_line_errors(stage1, served, tmp_path):
  workdir, _, _ = stage1
  partial = tmp_path / 'partial'
  shutil.copytree(workdir / 'model', partial)
  (partial / 'variables.msgpack').unlink()
  with pytest.raises(ConfigError, match=r'incomplete: variables\.msgpack missing'):
    serve.Model.load(partial)
  old = tmp_path / 'old'
  shutil.copytree(workdir / 'model', old)
  info = json.loads((old / 'format.json').read_text())
  (old / 'format.json').write_text(json.dumps({**info, 'format_version': 0}))
  with pytest.raises(ConfigError, match='model format version 0 .*reads version 1'):
    serve.Model.load(old)
  with pytest.raises(ConfigError, match=r'index/index\.json missing'):
    serve.Searcher.load(workdir)
  with pytest.raises(ConfigError, match='no such directory'):
    serve.Model.load(tmp_path / 'nothing')
  recall = tmp_path / 'recall'
  recall.mkdir()
  (recall / 'config.json').write_text(json.dumps({'job': 'recall'}))
  with pytest.raises(ConfigError, match='recall workdir without a model directory'):
    serve.Model.load(recall)  # a recall run from before model directories (or unfinished)
  with pytest.raises(ConfigError, match="variant='add' is for a recall workdir"):
    serve.Model.load(workdir, variant='add')
  assert model_dir.FORMAT_VERSION == 1


def _cli(module, *args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_search_and_errors(stage1, served, tmp_path):
  workdir, _, data = stage1
  queries = tmp_path / 'queries.txt'
  queries.write_text('\n'.join(data.eval_set.queries[:3]) + '\n\n')
  proc = _cli('mmret.search', served, '--queries', queries, '--k', 4, '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  expected = serve.Searcher.load(served).search(data.eval_set.queries[:3], k=4)
  assert [x['query'] for x in lines] == list(data.eval_set.queries[:3])
  assert [[h['item_id'] for h in x['hits']] for x in lines] == [
      [h.item_id for h in hits] for hits in expected]
  for args, message in [((workdir, 'red'), 'index/index.json missing'),
                        ((served,), 'give either a query or --queries FILE'),
                        ((tmp_path / 'none', 'red'), 'no such directory')]:
    proc = _cli('mmret.search', *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
  proc = _cli('mmret.export', tmp_path, tmp_path / 'out')
  assert proc.returncode == 2 and 'incomplete' in proc.stderr, proc.stderr
