"""SynthShop's small-label regime: graded judgements only, no clicks, split by query."""

import json

import numpy as np
import pytest

from mmret.data import evalset
from mmret.data import records
from mmret.data import relevance
from mmret.data import synthshop


@pytest.fixture(scope='module')
def judged_dir(tmp_path_factory):
  c = synthshop.default_config('tiny')
  c.judged.num_queries = 12
  c.judged.per_query = 5
  c.judged.eval_share = 0.4
  return synthshop.load_or_generate(c, tmp_path_factory.mktemp('cache'))


def test_only_graded_judgements_split_by_query(judged_dir):
  rows = [json.loads(line) for line in (judged_dir / 'interactions.jsonl').open()]
  assert all(set(r) == {'query', 'item_id', 'relevance', 'split'} for r in rows)
  by_query = {}
  for r in rows:
    by_query.setdefault(r['query'], []).append(r)
  assert len(by_query) == 12
  for judged in by_query.values():
    items = [r['item_id'] for r in judged]
    assert 1 <= len(items) <= 5 and len(set(items)) == len(items)
    assert len({r['split'] for r in judged}) == 1       # queries, not pairs, are split
  assert {r['split'] for r in rows} == {'train', 'eval'}


def test_grades_are_the_attribute_grades(judged_dir):
  d = records.load_dataset(judged_dir)
  items = {it.item_id: it for it in d.items}
  for x in d.interactions:
    expected = relevance.grade(d.queries[x.query].attributes, items[x.item_id].attributes)
    assert x.relevance == expected
    assert d.positive(x) == (expected >= 1)                  # no clicks: grades decide


def test_eval_targets_are_the_relevant_judgements(judged_dir):
  d = records.load_dataset(judged_dir)
  es = evalset.build_eval_set(d)
  index = d.item_index()
  for q, targets in zip(es.queries, es.targets):
    expected = sorted(index[x.item_id] for x in d.interactions
                      if x.query == q and x.split == 'eval' and x.relevance >= 1)
    assert targets.tolist() == expected and targets.size
  # Every judged pair of an eval query is there for re-ranking, irrelevant ones included.
  q, _, gains = es.judged()
  assert q.size == sum(x.split == 'eval' and x.query in es.queries for x in d.interactions)
  assert np.any(gains == 0)
