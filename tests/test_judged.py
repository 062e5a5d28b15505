"""Judged data as input: graded relevance parsing, grades deciding positives, nDCG@K."""

import json
import math

import ml_collections
import numpy as np
import pytest

from mmret.config import ConfigError
from mmret.data import evalset
from mmret.data import prepare
from mmret.data import records
from mmret.evaluate import metrics
from mmret.evaluate import retrieval

ESCI = records.RelevanceScale(labels=(('Exact', 3.0), ('Substitute', 2.0), ('Complement', 1.0),
                                      ('Irrelevant', 0.0)), threshold=2.0)


def _write(root, interactions, items=('x1', 'x2', 'x3')):
  root.mkdir(exist_ok=True)
  (root / 'items.jsonl').write_text(
      ''.join(json.dumps({'item_id': i, 'title': f'item {i}'}) + '\n' for i in items))
  (root / 'interactions.jsonl').write_text(
      ''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in interactions))
  return root


def test_any_numeric_grade_is_read(tmp_path):
  root = _write(tmp_path / 'd', [{'query': 'q', 'item_id': 'x1', 'relevance': g}
                                 for g in (0, 1.0, 2, 3, 4, 0.25)])
  d = records.load_dataset(root)
  assert [x.relevance for x in d.interactions] == [0.0, 1.0, 2.0, 3.0, 4.0, 0.25]
  # Default threshold 1: grades 0 and 0.25 are judged irrelevant, never positives.
  assert [d.positive(x) for x in d.interactions] == [False, True, True, True, True, False]


def test_label_vocabulary_and_threshold(tmp_path):
  rows = [{'query': 'q', 'item_id': 'x1', 'relevance': label}
          for label in ('Exact', 'Substitute', 'Complement', 'Irrelevant')]
  d = records.load_dataset(_write(tmp_path / 'd', rows), relevance=ESCI)
  assert [x.relevance for x in d.interactions] == [3.0, 2.0, 1.0, 0.0]
  assert [d.positive(x) for x in d.interactions] == [True, True, False, False]
  # The threshold is the dataset's, not a copy in every record.
  assert d.relevance == ESCI and d.judged_irrelevant(d.interactions[2])
  assert evalset.build_eval_set(d, split='train').relevant_threshold == 2.0


@pytest.mark.parametrize('bad, what', [
    ('"high"', 'unknown relevance label "high" .no labels are configured'),
    ('-1', 'expected a finite grade >= 0'),
    ('true', 'expected a finite grade >= 0'),
    ('NaN', 'expected a finite grade >= 0'),
    ('Infinity', 'expected a finite grade >= 0'),
    ('[2]', 'expected a finite grade >= 0'),
])
def test_malformed_grade_names_file_and_line(tmp_path, bad, what):
  root = _write(tmp_path / 'd', [{'query': 'q', 'item_id': 'x1', 'relevance': 1},
                                 '{"query": "q", "item_id": "x2", "relevance": %s}' % bad])
  with pytest.raises(records.DataError,
                     match=r"interactions\.jsonl:2: field 'relevance': " + what) as e:
    records.load_dataset(root)
  assert e.value.line == 2


def test_unknown_label_lists_the_configured_ones(tmp_path):
  root = _write(tmp_path / 'd', [{'query': 'q', 'item_id': 'x1', 'relevance': 'Exact'},
                                 {'query': 'q', 'item_id': 'x1', 'relevance': 'exact'}])
  with pytest.raises(records.DataError, match=r'interactions\.jsonl:2: .*"exact" \(known '
                     r'labels: Exact, Substitute, Complement, Irrelevant'):
    records.load_dataset(root, relevance=ESCI)


def test_grades_decide_positives_over_clicks():
  judged = records.Interaction('q', 'x1', click=True, relevance=0.0)
  assert not judged.positive(1.0)  # a click on an item judged irrelevant is not a target
  assert records.Interaction('q', 'x1', click=True, relevance=2.0).positive(1.0)
  assert not records.Interaction('q', 'x1', click=False, relevance=2.0).positive(1.0)
  assert records.Interaction('q', 'x1', relevance=0.5).positive(0.5)
  assert not records.Interaction('q', 'x1', relevance=0.5).positive(1.0)
  assert records.Interaction('q', 'x1').positive(1.0)  # no label at all: a positive pair


def test_relevance_scale_from_config():
  data = ml_collections.ConfigDict({'relevance': {
      'labels': 'Exact=3, Substitute=2,Complement=1,Irrelevant=0', 'threshold': 2.0}})
  assert prepare.relevance_scale(data) == ESCI
  assert prepare.relevance_scale(ml_collections.ConfigDict()) == records.RelevanceScale()
  for labels, threshold in (('Exact', 1.0), ('Exact=-1', 1.0), ('Exact=x', 1.0), ('', 'a')):
    bad = ml_collections.ConfigDict({'relevance': {'labels': labels, 'threshold': threshold}})
    with pytest.raises(ConfigError, match=r'config key data\.relevance\.'):
      prepare.relevance_scale(bad)


def _judged_eval_set(tmp_path):
  """Eval query 'q' judged on x1..x4 with ESCI labels; 'r' judged only Irrelevant."""
  rows = [{'query': 'q', 'item_id': f'x{i}', 'relevance': label, 'split': 'eval'}
          for i, label in zip(range(1, 5), ('Exact', 'Irrelevant', 'Substitute', 'Complement'))]
  rows.append({'query': 'r', 'item_id': 'x1', 'relevance': 'Irrelevant', 'split': 'eval'})
  root = _write(tmp_path / 'd', rows, items=('x1', 'x2', 'x3', 'x4', 'x5'))
  return evalset.build_eval_set(records.load_dataset(root, relevance=ESCI))


def test_eval_set_from_judgements(tmp_path):
  es = _judged_eval_set(tmp_path)
  # Targets are the relevant judgements only; 'r' has none and is not an eval query.
  assert es.queries == ['q'] and es.targets[0].tolist() == [0, 2]
  items = np.array([[0, 1, 2, 3, 4]])
  # Classes for relevance@K: 2 at the top grade, 1 from the threshold, else 0; -1 unjudged.
  np.testing.assert_array_equal(es.grade(np.array([0]), items), [[2, 0, 1, 0, -1]])
  np.testing.assert_array_equal(es.gain(np.array([0]), items), [[3, 0, 2, 1, 0]])
  np.testing.assert_array_equal(es.ideal_gains(3), [[3, 2, 1]])
  q, i, g = es.judged()
  assert q.tolist() == [0] * 4 and i.tolist() == [0, 1, 2, 3] and g.tolist() == [3, 0, 2, 1]


def test_ndcg_at_k_hand_computed():
  # Ranked gains 3, 0, 2; ideal 3, 2, 1 (order given does not matter).
  gains = np.array([[3.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
  ideal = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])  # query 2 has nothing to find: left out
  dcg = 3 / 1 + 0 / math.log2(3) + 2 / 2
  idcg = 3 / 1 + 2 / math.log2(3) + 1 / 2
  assert metrics.ndcg_at_k(gains, ideal, 3) == pytest.approx(dcg / idcg)
  assert metrics.ndcg_at_k(gains, ideal, 1) == pytest.approx(1.0)
  assert metrics.ndcg_at_k(gains, ideal, 2) == pytest.approx(3 / (3 + 2 / math.log2(3)))
  assert math.isnan(metrics.ndcg_at_k(gains[1:], ideal[1:], 3))


def test_ndcg_rerank_hand_computed():
  # Query 0 judges 3 items; query 1 judges 2 items, both of gain 0 (undefined: left out).
  query = np.array([0, 1, 0, 0, 1])
  scores = np.array([0.1, 5.0, 0.9, 0.5, 4.0])
  gains = np.array([2.0, 0.0, 0.0, 1.0, 0.0])
  # By score, query 0 ranks gains 0 (0.9), 1 (0.5), 2 (0.1); ideally 2, 1, 0.
  dcg = 0 + 1 / math.log2(3) + 2 / 2
  idcg = 2 + 1 / math.log2(3)
  assert metrics.ndcg_rerank(query, scores, gains, 10) == pytest.approx(dcg / idcg)
  assert metrics.ndcg_rerank(query, scores, gains, 1) == pytest.approx(0.0)


def test_evaluator_reports_ndcg(tmp_path):
  es = _judged_eval_set(tmp_path)
  # 1-d vectors: item scores for query 'q' are 0.1, 0.4, 0.2, 0.3, 0.5 -> the ranking
  # x5 (unjudged), x2 (0), x4 (1), x3 (2), x1 (3).
  items = np.array([[0.1], [0.4], [0.2], [0.3], [0.5]], np.float32)
  result = retrieval.RetrievalEvaluator(es, ks=(5,), scann=False).run(
      np.ones((1, 1), np.float32), items)
  ranked = 0 / 1 + 0 / math.log2(3) + 1 / 2 + 2 / math.log2(5) + 3 / math.log2(6)
  ideal = 3 + 2 / math.log2(3) + 1 / 2
  assert result.metrics['ndcg@5'] == pytest.approx(ranked / ideal)
  # Re-ranking the judged x1..x4 by score: gains 0, 1, 2, 3 in that order.
  judged = 0 + 1 / math.log2(3) + 2 / 2 + 3 / math.log2(5)
  ideal_judged = 3 + 2 / math.log2(3) + 1 / 2 + 0
  assert result.metrics['ndcg@5/judged'] == pytest.approx(judged / ideal_judged)


def test_listed_judged_ndcg_ranks_unlisted_items_last(tmp_path):
  es = _judged_eval_set(tmp_path)
  # A searcher listing x4 (gain 1) then x1 (gain 3); x2 (0) and x3 (2) are not listed and
  # rank last, in item order: x2 then x3.
  ids = np.array([[3, 0, -1]])
  scores = np.array([[2.0, 1.0, -np.inf]])
  out = retrieval.listed_judged_ndcg(ids, scores, es, (4,), prefix='bm25/')
  dcg = 1 + 3 / math.log2(3) + 0 / 2 + 2 / math.log2(5)
  idcg = 3 + 2 / math.log2(3) + 1 / 2
  assert out == {'bm25/ndcg@4/judged': pytest.approx(dcg / idcg)}
