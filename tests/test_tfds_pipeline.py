"""Files -> TFDS array_record -> Grain batches on the BYOD fixture, checked against the records."""

import os
import pickle
import pathlib
import shutil

import grain
import numpy as np
import pytest

from mmret.data import features
from mmret.data import pipelines
from mmret.data import positives
from mmret.data import records
from mmret.data import tfds_builder
from mmret.data import tokenizer as tokenizer_lib

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'
S = 4  # image size


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('byod')
  src = root / 'src'
  shutil.copytree(FIXTURE, src)
  builder = tfds_builder.prepare(src, root / 'tfds', image_size=S)
  ds = records.load_dataset(src)
  texts = [it.title for it in ds.items] + [x.query for x in ds.interactions]
  tok = tokenizer_lib.Tokenizer.train(texts * 2, vocab_size=120)
  return builder, ds, tok, src, root / 'tfds'


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _keep(builder, ds, **kw):
  return positives.training_rows(ds, pipelines.query_vocabulary(builder), **kw)


def test_prepare_round_trip(data):
  builder, ds, _, _, _ = data
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {'items': 6, 'train': 9, 'eval': 7, 'queries': 5, 'train_pages': 5}
  assert builder.info.metadata['context_names'] == ['price', 'rating']
  items = builder.as_data_source(split='items')
  for i, item in enumerate(ds.items):
    row = items[i]
    assert row['item_index'] == i and row['item_id'].decode() == item.item_id
    assert row['title'].decode('utf-8') == item.title  # non-ASCII survives
    assert row['description'].decode('utf-8') == item.description
    assert row['image'].shape == (S, S, 3) and row['image'].dtype == np.uint8
    assert bool(row['has_image']) == (item.image is not None)
  np.testing.assert_array_equal(items[0]['image'], np.full((S, S, 3), 255))   # white PNG
  np.testing.assert_array_equal(items[1]['image'], np.broadcast_to([200, 30, 30], (S, S, 3)))
  assert (items[2]['image'][:, 0] == 0).all() and (items[2]['image'][:, -1] == 255).all()
  np.testing.assert_array_equal(items[3]['image'], 0)                          # no image
  np.testing.assert_allclose(items[1]['context'], [19.5, 0.0])
  np.testing.assert_array_equal(items[1]['context_present'], [True, False])    # rating null
  np.testing.assert_array_equal(items[4]['context_present'], [False, False])
  evals = builder.as_data_source(split='eval')
  row = evals[2]  # white dress, a3, p5, purchase only
  assert (row['query'].decode(), row['item_index'], row['page_id'].decode()) == (
      'white dress', 2, 'p5')
  assert (row['purchase'], row['purchase_present'], row['click_present']) == (1.0, True, False)
  assert (row['relevance'], row['day'], row['query_index']) == (-1, 2, 3)


def test_prepare_skips_unchanged_input(data):
  builder, _, _, src, out = data
  info = pathlib.Path(builder.data_dir) / 'dataset_info.json'
  mtime = info.stat().st_mtime_ns
  again = tfds_builder.prepare(src, out, image_size=S)
  assert again.data_dir == builder.data_dir and info.stat().st_mtime_ns == mtime
  st = (src / 'items.jsonl').stat()
  os.utime(src / 'items.jsonl', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert tfds_builder.fingerprint(src, S, None) not in builder.data_dir


def test_pretrain_pairs_values(data):
  builder, ds, tok, _, _ = data
  batches = list(pipelines.pretrain_pairs(builder, tok, keep=_keep(builder, ds), batch_size=4,
                                          seed=0, query_len=7, title_len=9, num_epochs=1))
  assert len(batches) == 2  # 6 positive train pairs, the second batch padded
  b = batches[0]
  shapes = {k: (v.shape, v.dtype) for k, v in b.items()}
  assert shapes == {
      'query_tokens': ((4, 7), np.int32), 'query_mask': ((4, 7), bool),
      'title_tokens': ((4, 9), np.int32), 'title_mask': ((4, 9), bool),
      'image': ((4, S, S, 3), np.uint8), 'image_present': ((4,), bool),
      'text_present': ((4,), bool), 'item_index': ((4,), np.int32),
      'query_index': ((4,), np.int32), 'context': ((4, 2), np.float32),
      'context_present': ((4, 2), bool), 'valid': ((4,), bool)}
  vocab = pipelines.query_vocabulary(builder)
  items = builder.as_data_source(split='items')
  seen = []
  for b in batches:
    for r in np.flatnonzero(b['valid']):
      query, item = vocab[b['query_index'][r]], int(b['item_index'][r])
      seen.append((query, ds.items[item].item_id))
      np.testing.assert_array_equal(b['query_tokens'][r], tok.encode([query], 7)[0][0])
      title_ids = tok.encode([ds.items[item].title], 9)[0][0]
      np.testing.assert_array_equal(b['title_tokens'][r], title_ids)
      np.testing.assert_array_equal(b['image'][r], items[item]['image'])
      assert b['image_present'][r] == (ds.items[item].image is not None)
  expected = [(x.query, x.item_id) for x, s in zip(ds.interactions, ds.splits())
              if s == 'train' and ds.positive(x)]
  assert sorted(seen) == sorted(expected)
  assert ('白色连衣裙', 'a3') in seen and ('sneakers', 'a4') in seen
  assert batches[1]['valid'].tolist() == [True, True, False, False]


def test_deterministic_shuffle_and_checkpoint(data):
  builder, ds, tok, _, _ = data

  def make(seed):
    return pipelines.pretrain_pairs(builder, tok, keep=_keep(builder, ds), batch_size=2,
                                    seed=seed, query_len=6, title_len=6)

  def order(batches):
    return [b['item_index'].tolist() + b['query_index'].tolist() for b in batches]

  a, b, c = (_take(iter(make(s)), 6) for s in (0, 0, 1))
  assert order(a) == order(b) and order(a) != order(c)
  assert 'valid' not in a[0]  # training: always full batches
  it = iter(make(0))
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = iter(make(0))
  resumed.set_state(state)
  assert order(_take(resumed, 3)) == order(expected)


def _is_pair(row, exclude=frozenset(), only=None) -> bool:
  """The training-pair rule on a decoded `train` row (independent of the log's columns)."""
  q = int(row['query_index'])
  return (bool(row['positive']) and q not in exclude
          and (only is None or (q, int(row['item_index'])) in only))


def test_shards_are_disjoint_and_cover(data):
  builder, ds, tok, _, _ = data
  kw = dict(batch_size=3, seed=0, query_len=6, title_len=6, num_epochs=1,
            keep=_keep(builder, ds))
  rows = []
  for shard in (0, 1):
    shard_rows = set()
    for b in pipelines.pretrain_pairs(builder, tok, shard_index=shard, shard_count=2, **kw):
      shard_rows |= {(int(q), int(i)) for q, i, v in
                     zip(b['query_index'], b['item_index'], b['valid']) if v}
    rows.append(shard_rows)
  assert not rows[0] & rows[1]
  everything = {(int(r['query_index']), int(r['item_index']))
                for r in builder.as_data_source(split='train') if _is_pair(r)}
  assert rows[0] | rows[1] == everything and everything


@pytest.mark.parametrize('exclude, only', [(frozenset(), None), (frozenset({1}), None),
                                           (frozenset({0}), 'most_clicked')])
def test_pairs_are_those_of_filtering_the_decoded_split(data, exclude, only):
  """The rows kept from the log's columns (positives.training_rows) are the decoded split's
  training pairs, and the batches (order included, two shards, two epochs) equal those of a
  pipeline that shuffles, filters and joins the decoded rows themselves."""
  builder, ds, tok, _, _ = data
  if only:
    only = positives.most_clicked_pairs(ds, pipelines.query_vocabulary(builder))
  split = builder.as_data_source(split='train')
  keep = _keep(builder, ds, exclude_queries=exclude, only=only)
  assert keep.tolist() == [_is_pair(r, exclude, only) for r in split]
  items = features.ItemSource(builder.data_dir)
  fields = features.PairFields(tok, 6, 7)
  for shard in (0, 1):
    reference = (grain.MapDataset.source(split)[shard::2].shuffle(seed=3).repeat(2)
                 .filter(lambda r: _is_pair(r, exclude, only))
                 .map(lambda r: {**r, **items[int(r['item_index'])]}).to_iter_dataset()
                 .batch(2, batch_fn=features.Batcher(fields, 2, pad=True)))
    got = pipelines.pretrain_pairs(builder, tok, keep=keep, batch_size=2, seed=3, query_len=6,
                                   title_len=7, shard_index=shard, shard_count=2, num_epochs=2)
    got, reference = list(got), list(reference)
    assert len(got) == len(reference) > 0
    for a, b in zip(got, reference):
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_worker_processes_make_the_same_batches_and_resume(data):
  """data.workers: two Grain worker processes give the batches of the training process, in
  order, over epoch boundaries; the state after three batches resumes on the fourth."""
  builder, ds, tok, _, _ = data
  kw = dict(keep=_keep(builder, ds), batch_size=4, seed=5, query_len=6, title_len=6)
  plain = _take(iter(pipelines.pretrain_pairs(builder, tok, **kw)), 6)  # 6 pairs an epoch
  it = iter(pipelines.pretrain_pairs(builder, tok, workers=2, **kw))
  parallel = _take(it, 3)
  state = it.get_state()
  parallel += _take(it, 3)
  it.close()
  resumed = iter(pipelines.pretrain_pairs(builder, tok, workers=2, **kw))
  resumed.set_state(state)
  fourth = next(resumed)
  resumed.close()
  for a, b in zip(plain, parallel):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  for key in plain[3]:
    np.testing.assert_array_equal(fourth[key], plain[3][key], err_msg=key)


def test_pairs_refuse_a_keep_mask_of_another_split(data):
  builder, ds, tok, _, _ = data
  kw = dict(batch_size=2, seed=0, query_len=6, title_len=6)
  with pytest.raises(ValueError, match=r"keep has shape \(3,\), the prepared 'train' split has 9"):
    pipelines.pretrain_pairs(builder, tok, keep=np.ones(3, bool), **kw)
  with pytest.raises(ValueError, match="no training pair .* nothing to pre-train on"):
    pipelines.pretrain_pairs(builder, tok, keep=np.zeros(9, bool), **kw)


def test_recall_pages(data):
  builder, _, _, _, _ = data
  (b,) = list(pipelines.recall_pages(builder, batch_size=5, seed=0, num_epochs=1))
  vocab = pipelines.query_vocabulary(builder)
  pages = {vocab[q]: (p.tolist(), m.tolist())
           for q, p, m in zip(b['query_index'], b['positives'], b['positive_mask'])}
  assert pages['white dress'] == ([0, 2, 0], [True, True, False])   # a1 pos 0, a3 pos 2
  assert pages['Sommerkleid weiß'] == ([0, 0, 0], [True, False, False])  # (query, day) page
  assert len(pages) == 5 and b['valid'].all()


def test_item_and_query_batches(data):
  builder, ds, tok, _, _ = data
  batches = list(pipelines.item_batches(builder, tok, batch_size=4, title_len=8))
  assert [b['item_index'].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 5, 5]]
  assert batches[1]['valid'].tolist() == [True, True, False, False]
  assert batches[1]['text_present'].tolist()[:2] == [True, False]   # a6 has an empty title
  assert batches[0]['image_present'].tolist() == [True, True, True, False]
  np.testing.assert_array_equal(batches[0]['image'][3], 0)
  np.testing.assert_array_equal(batches[0]['title_tokens'],
                                tok.encode([it.title for it in ds.items[:4]], 8)[0])
  queries = ['Sommerkleid weiß', '白色连衣裙', 'jacket 🧥']
  qb = list(pipelines.query_batches(queries, tok, batch_size=2, max_len=6,
                                    trigram_buckets=32, max_trigrams=5))
  assert len(qb) == 2 and qb[1]['valid'].tolist() == [True, False]
  np.testing.assert_array_equal(qb[0]['query_tokens'], tok.encode(queries[:2], 6)[0])
  assert (qb[0]['query_tokens'][:, 1] != tok.unk_id).all()  # the trained vocab covers them
  assert qb[1]['trigram_ids'].shape == (2, 5)


def test_transforms_pickle_for_workers(data):
  builder, ds, tok, _, _ = data
  rows = pickle.loads(pickle.dumps(features.PairRows(builder.data_dir, 'train',
                                                     features.PairFields(tok, 6, 6))))
  b = rows([7])  # 白色连衣裙 -> a3
  assert pipelines.query_vocabulary(builder)[b['query_index'][0]] == '白色连衣裙'
  np.testing.assert_array_equal(b['title_tokens'][0], tok.encode([ds.items[2].title], 6)[0][0])
  batcher = pickle.loads(pickle.dumps(features.Batcher(rows, 2, True)))
  b = batcher([7])
  assert b['valid'].tolist() == [True, False] and b['item_index'].tolist() == [2, 2]


def test_item_source_decodes_the_item_fields_as_tfds_does(data):
  """ItemSource decodes only the item fields, from raw records: equal (values and dtypes) to
  TFDS's decoding of the whole row; batched `rows` equal single reads; it pickles."""
  builder, _, tok, _, _ = data
  full = builder.as_data_source(split='items')
  items = pickle.loads(pickle.dumps(features.ItemSource(builder.data_dir)))
  assert len(items) == len(full)
  batch = items.rows([3, 0, 5])
  for index, row in zip([3, 0, 5], batch):
    assert sorted(row) == sorted(features.ITEM_ROW_FIELDS)
    for key in features.ITEM_ROW_FIELDS:
      for got in (row[key], items[index][key]):
        np.testing.assert_array_equal(got, full[index][key], err_msg=key)
        assert np.asarray(got).dtype == np.asarray(full[index][key]).dtype, key
  # Two shards of the catalog pass: every item once, in order within each shard.
  shards = [[i for b in pipelines.item_batches(builder, tok, batch_size=2, title_len=8,
                                               shard_index=s, shard_count=2)
             for i, v in zip(b['item_index'].tolist(), b['valid'].tolist()) if v]
            for s in (0, 1)]
  assert shards == [list(range(0, len(full), 2)), list(range(1, len(full), 2))]
  with pytest.raises(ValueError, match='shard_index 2'):
    pipelines.item_batches(builder, tok, batch_size=2, title_len=8, shard_index=2,
                           shard_count=2)
