"""The engage job's page rows and labelled impressions, read from the log's columns: a
hand-worked page, and equality with the one-object-at-a-time reference on random logs (as a
list and as a loaded InteractionLog) and on SynthShop tiny."""

import random

import numpy as np
import pytest

from mmret.data import interaction_log
from mmret.data import prepare as prepare_lib
from mmret.data import records
from mmret.config import load_config
from mmret.jobs.engage import data as engage_data

I = records.Interaction
ITEMS = [records.Item(f'x{i}', f'item {i}') for i in range(8)]


def _dataset(interactions):
  return records.Dataset(root=None, items=ITEMS, interactions=interactions, queries={},
                         context_names=())


def reference_pages(dataset, split, max_page_negatives):
  """The object loop page_examples replaced (rows as tuples), kept as the independent check."""
  index = dataset.item_index()
  train_queries = sorted({x.query for x, s in zip(dataset.interactions, dataset.splits())
                          if s == 'train'})
  query_index = {q: i for i, q in enumerate(train_queries)}
  page_number = {k: i for i, k in enumerate(dict.fromkeys(dataset.page_keys()))}
  pages = {}
  for row, (x, s, key) in enumerate(zip(dataset.interactions, dataset.splits(),
                                        dataset.page_keys())):
    label = interaction_log.engagement_label(x)
    if s != split or label is None:
      continue
    rank = (x.position if x.position is not None else 1 << 62, row)
    pages.setdefault(key, []).append((rank, index[x.item_id], label, x.query))
  out = []
  for key, hits in pages.items():
    hits.sort()
    engaged = list(dict.fromkeys(i for _, i, y, _ in hits if y > 0))
    negatives = [i for i in dict.fromkeys(i for _, i, y, _ in hits if y <= 0)
                 if i not in engaged][:max_page_negatives]
    for item in engaged:
      out.append((hits[0][3], query_index.get(hits[0][3], -1), item, tuple(negatives),
                  page_number[key]))
  return out


def rows_of(examples):
  return [(examples.query[r], int(examples.query_index[r]), int(examples.positive[r]),
           tuple(examples.negatives[r][examples.negative_mask[r]].tolist()),
           int(examples.page_index[r])) for r in range(len(examples))]


def test_a_page_by_hand():
  d = _dataset([
      I('shoes', 'x5', page_id='p', position=4, engaged=False, split='train'),
      I('boots', 'x0', page_id='q', position=1, click=True, split='train'),
      I('shoes', 'x3', page_id='p', position=2, click=False, split='train'),
      I('shoes', 'x1', page_id='p', position=3, click=True, split='train'),   # engaged
      I('shoes', 'x2', page_id='p', position=0, click=False, split='train'),
      I('shoes', 'x3', page_id='p', position=5, purchase=True, split='train'),  # engaged later
      I('shoes', 'x6', page_id='p', split='train'),                            # no label
      I('shoes', 'x7', page_id='p', click=False, split='train'),               # unranked: last
      I('shoes', 'x4', page_id='p', position=1, click=True, split='eval'),     # other split
      I('hats', 'x2', page_id='r', position=0, click=False, split='train'),    # no engaged item
  ])
  ex = engage_data.page_examples(d, 'train', max_page_negatives=3)
  # Page p: engaged x1 (pos 3), x3 (pos 5; so never a negative); negatives by position x2, x5,
  # x7 (3 kept). Page q: x0, no negatives. Rows in order of the pages' first impressions.
  assert rows_of(ex) == [('shoes', 2, 1, (2, 5, 7), 0), ('shoes', 2, 3, (2, 5, 7), 0),
                         ('boots', 0, 0, (), 1)]
  assert ex.negatives.shape == (3, 3) and ex.negatives.dtype == np.int32
  ev = engage_data.page_examples(d, 'eval', max_page_negatives=3)
  assert rows_of(ev) == [('shoes', 2, 4, (), 0)]
  imp = engage_data.labelled_impressions(d, 'train')
  assert imp.item.tolist() == [5, 0, 3, 1, 2, 3, 7, 2]
  assert imp.engaged.tolist() == [False, True, False, True, False, True, False, False]
  assert imp.relevance.tolist() == [-1.0] * 8
  with pytest.raises(ValueError, match='split'):
    engage_data.page_examples(d, 'test')


def _random_log(rng, n):
  rows = []
  for _ in range(n):
    rec = {'query': f'q{rng.randrange(5)}', 'item_id': f'x{rng.randrange(8)}'}
    if rng.random() < 0.7:
      rec['page_id'] = f'p{rng.randrange(6)}'
    if rng.random() < 0.8:
      rec['position'] = rng.randrange(4)  # ties on purpose
    for label in ('click', 'purchase', 'engaged'):
      if rng.random() < 0.3:
        rec[label] = rng.random() < 0.5
    if rng.random() < 0.3:
      rec['relevance'] = float(rng.randrange(3))
    if rng.random() < 0.8:
      rec['day'] = rng.randrange(3)
    if rng.random() < 0.2:
      rec['split'] = rng.choice(records.SPLITS)
    rows.append(rec)
  return rows


@pytest.mark.parametrize('seed', range(6))
def test_equals_the_object_reference_on_random_logs(seed):
  rng = random.Random(seed)
  recs = _random_log(rng, rng.choice((0, 5, 60, 300)))
  builder = interaction_log.LogBuilder([item.item_id for item in ITEMS])
  for rec in recs:
    builder.add(rec)
  log = builder.build()
  for interactions in (list(log), log):
    d = _dataset(interactions)
    for split in records.SPLITS:
      for p in (1, 3, 32):
        assert rows_of(engage_data.page_examples(d, split, p)) == reference_pages(d, split, p)
      imp = engage_data.labelled_impressions(d, split)
      ref = [(x.query, ITEMS.index(next(i for i in ITEMS if i.item_id == x.item_id)),
              interaction_log.engagement_label(x) == 1,
              -1.0 if x.relevance is None else x.relevance)
             for x, s in zip(d.interactions, d.splits())
             if s == split and interaction_log.engagement_label(x) is not None]
      assert list(zip(imp.query, imp.item.tolist(), imp.engaged.tolist(),
                      imp.relevance.tolist())) == ref


def test_equals_the_object_reference_on_synthshop_tiny(tmp_path):
  config = load_config('configs/engage.py:tiny', {'data.cache_dir': str(tmp_path)})
  d = prepare_lib.prepare(config.data).dataset
  assert isinstance(d.interactions, interaction_log.InteractionLog)
  for split in records.SPLITS:
    got = rows_of(engage_data.page_examples(d, split, 32))
    assert len(got) > 0 and got == reference_pages(d, split, 32)
