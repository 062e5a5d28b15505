"""Tests for mmret.evaluate: exact and ScaNN search, ranking metrics, BM25, the evaluator."""

import dataclasses
import itertools

import numpy as np
import pytest

from mmret.evaluate import bm25
from mmret.evaluate import metrics
from mmret.evaluate import retrieval
from mmret.evaluate import search


def _unit(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------- search


def test_exact_topk_matches_numpy_argsort():
  rng = np.random.default_rng(0)
  queries, items = _unit(rng, 37, 8), _unit(rng, 300, 8)
  scores, ids = search.exact_topk(queries, items, 10)
  full = queries.astype(np.float64) @ items.T.astype(np.float64)
  expected = np.argsort(-full, axis=1, kind='stable')[:, :10]
  assert ids.dtype == np.int32 and ids.shape == (37, 10)
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-5)


def test_exact_topk_blocked_equals_unblocked_with_ties():
  rng = np.random.default_rng(1)
  items = _unit(rng, 100, 4)
  items[50:60] = items[0]  # exact ties: the lower index must win in every blocking
  queries = np.concatenate([items[:3], _unit(rng, 20, 4)])
  whole = search.exact_topk(queries, items, 15, batch_size=1024, item_batch_size=1024)
  blocked = search.exact_topk(queries, items, 15, batch_size=8, item_batch_size=32)
  np.testing.assert_array_equal(whole[1], blocked[1])
  # Different matmul shapes may differ in the last bit; the order must not.
  np.testing.assert_allclose(whole[0], blocked[0], atol=1e-6)
  np.testing.assert_array_equal(whole[1][0, :11], [0, *range(50, 60)])


def test_exact_topk_caps_k_at_catalog_size():
  rng = np.random.default_rng(2)
  scores, ids = search.exact_topk(_unit(rng, 3, 4), _unit(rng, 5, 4), 1000)
  assert scores.shape == ids.shape == (3, 5)
  np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(5), (3, 1)))


def test_scann_default_rule_has_high_neighbour_recall():
  rng = np.random.default_rng(3)
  items, queries = _unit(rng, 12_000, 16), _unit(rng, 100, 16)
  _, exact = search.exact_topk(queries, items, 10)
  index = search.build_scann(items, num_neighbors=10)
  assert index.params.num_leaves == 0 and not index.params.brute_force  # AH + reorder regime
  assert not index.params.exhaustive and index.params.reorder == 100
  scores, ids = index.search(queries, 10)
  assert ids.dtype == np.int32 and ids.shape == (100, 10)
  assert search.neighbour_recall(ids, exact) >= 0.9
  # A wider search than built for still returns k distinct ids per row.
  _, wide = index.search(queries, 300)
  assert wide.shape == (100, 300) and (wide >= 0).all()
  assert all(len(set(row)) == 300 for row in wide)


def test_scann_tree_is_deterministic_and_pads_missing():
  rng = np.random.default_rng(4)
  items, queries = _unit(rng, 2000, 16), _unit(rng, 20, 16)
  _, exact = search.exact_topk(queries, items, 10)
  full = search.build_scann(items, num_neighbors=10, num_leaves=20, leaves_to_search=20)
  first, second = full.search(queries, 10)[1], search.build_scann(
      items, num_neighbors=10, num_leaves=20, leaves_to_search=20).search(queries, 10)[1]
  np.testing.assert_array_equal(first, second)
  assert search.neighbour_recall(first, exact) >= 0.9
  # One leaf of ~100 items cannot yield 500 neighbours: the rest of each row is padding.
  narrow = search.build_scann(items, num_neighbors=500, num_leaves=20, leaves_to_search=1)
  scores, ids = narrow.search(queries, 500)
  assert ids.shape == (20, 500) and (ids == -1).any()
  assert np.all((ids == -1) == np.isneginf(scores))


def test_scann_tiny_catalog_is_exact():
  rng = np.random.default_rng(5)
  items, queries = _unit(rng, 30, 8), _unit(rng, 7, 8)
  index = search.build_scann(items, num_neighbors=100)
  assert index.params.brute_force and index.params.num_neighbors == 30
  _, ids = index.search(queries, 100)
  _, exact = search.exact_topk(queries, items, 100)
  assert ids.shape == (7, 30)
  np.testing.assert_array_equal(ids, exact)


def test_scann_params_rule():
  # 1000 leaves: 5% = 50 beats the 20 * k * L / N = 20 leaves that hold 20k candidates.
  big = search.scann_params(1_000_000, num_neighbors=1000)
  assert (big.num_leaves, big.leaves_to_search, big.reorder) == (1000, 50, 4000)
  # 200k, k = 100: round(sqrt(N)) = 447 leaves, ceil(0.05 * 447) = 23 searched, reorder 4k.
  medium = search.scann_params(200_000, num_neighbors=100)
  assert (medium.num_leaves, medium.leaves_to_search, medium.reorder) == (447, 23, 400)
  assert not medium.exhaustive and medium.training_sample_size == 100_000
  # Deep lists search more leaves: 20 * 1000 * 447 / 200k -> 45 leaves.
  assert search.scann_params(200_000, num_neighbors=1000).leaves_to_search == 45
  assert search.scann_params(49_999, num_neighbors=10).num_leaves == 0
  assert search.scann_params(50_000, num_neighbors=10).reorder == 100
  # 10k: the reorder pool is capped at a quarter of the catalog, not 4k = 4000.
  assert search.scann_params(10_000, num_neighbors=1000).reorder == 2500


def test_scann_params_exhaustive_below_documented_size():
  # The case: 3,000 items, K = 1000 is exact search by construction, and says so.
  small = search.scann_params(3000, num_neighbors=1000)
  assert small.brute_force and small.exhaustive
  assert search.scann_params(search.EXHAUSTIVE_BELOW - 1, num_neighbors=10).exhaustive
  assert search.scann_params(20_000, num_neighbors=20_000).exhaustive  # K = N: everything
  # Explicit tree/reorder arguments below the size are honoured (and are not brute force).
  tree = search.scann_params(2000, num_neighbors=10, num_leaves=20, leaves_to_search=2)
  assert not tree.brute_force and not tree.exhaustive


@pytest.mark.parametrize('n', [10_000, 10_001, 12_345, 49_999, 50_000, 200_000, 2_000_000])
def test_scann_reorder_never_whole_catalog_from_documented_size(n):
  assert n >= search.EXHAUSTIVE_BELOW
  for k in (1, 10, 100, 1000, 2500, 2501, 5000, n // 2, n - 1):
    params = search.scann_params(n, num_neighbors=k)
    assert k <= params.reorder < n, (n, k, params)
    assert params.reorder <= max(k, 4 * max(k, 25)), (n, k, params)  # a small multiple of k
    assert not params.exhaustive and not params.brute_force
    if params.num_leaves:
      assert 0 < params.leaves_to_search <= params.num_leaves


def test_neighbour_recall_hand_case():
  approx = np.array([[1, 2, 3], [4, -1, -1]])
  exact = np.array([[3, 2, 9], [4, 5, 6]])
  assert search.neighbour_recall(approx, exact) == pytest.approx((2 / 3 + 1 / 3) / 2)


# --------------------------------------------------------------------------------- metrics


def test_recall_at_k_hand_cases():
  ids = np.array([[5, 1, 7, -1], [2, 3, 4, 0], [9, 8, 6, 1]])
  targets = [np.array([1, 7, 8]), np.array([0]), np.array([], np.int64)]
  # Query 2 has no target and leaves the mean; -1 never matches.
  assert metrics.recall_at_k(ids, targets, 1) == pytest.approx(0.0)
  assert metrics.recall_at_k(ids, targets, 2) == pytest.approx((1 / 3 + 0) / 2)
  assert metrics.recall_at_k(ids, targets, 3) == pytest.approx((2 / 3 + 0) / 2)
  assert metrics.recall_at_k(ids, targets, 4) == pytest.approx((2 / 3 + 1) / 2)
  assert metrics.recall_at_k(ids, targets, 100) == pytest.approx((2 / 3 + 1) / 2)
  assert np.isnan(metrics.recall_at_k(ids[2:], targets[2:], 4))


def test_relevance_at_k_hand_cases():
  grades = np.array([[2, 1, 0, -1], [-1, -1, 2, 2], [0, 0, 0, 0], [-1, -1, -1, -1]])
  at2 = metrics.relevance_at_k(grades, 2)
  # Query 1's top 2 and query 3 are all unknown: they leave the mean.
  assert at2 == pytest.approx({'relevance@2': (1 + 0) / 2, 'exact_match@2': (0.5 + 0) / 2})
  at4 = metrics.relevance_at_k(grades, 4)
  assert at4['relevance@4'] == pytest.approx((2 / 3 + 1 + 0) / 3)
  assert at4['exact_match@4'] == pytest.approx((1 / 3 + 1 + 0) / 3)
  assert metrics.relevance_at_k(grades, 1000) == pytest.approx(
      {'relevance@1000': at4['relevance@4'], 'exact_match@1000': at4['exact_match@4']})


def _pairwise_auc(scores, labels, weights):
  num = den = 0.0
  for p, n in itertools.product(np.flatnonzero(labels), np.flatnonzero(~labels)):
    w = weights[p] * weights[n]
    num += w * ((scores[p] > scores[n]) + 0.5 * (scores[p] == scores[n]))
    den += w
  return num / den


def test_roc_auc_matches_pairwise_reference_with_ties():
  rng = np.random.default_rng(6)
  scores = rng.integers(0, 5, size=60).astype(np.float64)  # few values -> many ties
  labels = rng.random(60) < 0.4
  weights = rng.random(60) + 0.1
  assert metrics.roc_auc(scores, labels) == pytest.approx(
      _pairwise_auc(scores, labels, np.ones(60)))
  assert metrics.roc_auc(scores, labels, weights) == pytest.approx(
      _pairwise_auc(scores, labels, weights))


def test_roc_auc_hand_cases():
  labels = np.array([0, 0, 1, 1])
  assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
  assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
  assert metrics.roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
  assert metrics.roc_auc([0.1, 0.6, 0.5, 0.9], labels) == 0.75
  assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


# ------------------------------------------------------------------------------------ BM25


def test_bm25_finds_the_obvious_title():
  titles = ['Red cotton summer dress', 'Brown leather boots', 'Blue denim jeans',
            'White ceramic mug', 'Leather wallet, brown']
  index = bm25.BM25Index(titles)
  scores, ids = index.search(['leather boots', 'MUG', 'spaceship'], 8)
  assert ids.dtype == np.int32 and ids.shape == (3, 8)
  assert ids[0, 0] == 1 and set(ids[0, :2]) == {1, 4}
  np.testing.assert_array_equal(ids[0, 2:], -1)  # only two titles share a token
  np.testing.assert_array_equal(ids[1], [3] + [-1] * 7)
  np.testing.assert_array_equal(ids[2], -1)  # no known token: nothing retrieved
  assert np.all(np.isneginf(scores[ids == -1])) and np.all(scores[ids >= 0] > 0)
  np.testing.assert_array_equal(bm25.bm25_topk(['denim'], titles, 2), [[2, -1]])


# ------------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class FakeEvalSet:
  """Duck-typed stand-in for mmret.data.evalset.EvalSet with a [Q, N] grade table."""
  queries: list[str]
  targets: list[np.ndarray]
  image_only_targets: list[np.ndarray]
  grade_table: np.ndarray

  def grade(self, query_idx, item_idx):
    assert (np.asarray(item_idx) >= 0).all(), 'the evaluator must mask -1 before grading'
    return self.grade_table[np.asarray(query_idx)[:, None], item_idx]


def _planted_eval_set():
  """10 queries over 40 items; query q's vector is item 2q's, so exact top-1 is item 2q.

  Targets: {2q} for q < 5, {2q, 2q + 1} for q >= 5 -> recall@1 = (5 + 5 * 0.5) / 10 = 0.75.
  Image-only: {2q} for q < 3, {2q + 1} for q = 5 -> recall@1/image_only = 3 / 4.
  Grades: 2 for item 2q, 1 for 2q + 1, 0 otherwise, unknown for item 39 -> over all 40
  items relevance = 2 / 39 and exact relevance = 1 / 39.
  """
  rng = np.random.default_rng(7)
  items = _unit(rng, 40, 16)
  queries = items[0:20:2].copy()
  targets = [np.array([2 * q]) if q < 5 else np.array([2 * q, 2 * q + 1]) for q in range(10)]
  image_only = [np.array([2 * q]) if q < 3 else np.zeros(0, np.int64) for q in range(10)]
  image_only[5] = np.array([11])
  table = np.zeros((10, 40), np.int8)
  table[np.arange(10), 2 * np.arange(10)] = 2
  table[np.arange(10), 2 * np.arange(10) + 1] = 1
  table[:, 39] = -1
  eval_set = FakeEvalSet([f'q{q}' for q in range(10)], targets, image_only, table)
  return eval_set, queries, items


def test_evaluator_end_to_end_on_planted_vectors():
  eval_set, queries, items = _planted_eval_set()
  cold = [np.array([2 * q]) if q % 2 == 0 else np.zeros(0, np.int64) for q in range(10)]
  evaluator = retrieval.RetrievalEvaluator(eval_set, ks=(1, 1000),
                                           extra_target_sets={'cold': cold})
  result = evaluator.run(queries, items)
  out = result.metrics
  expected_keys = {f'{m}@{k}{s}' for k in (1, 1000) for m, s in [
      ('recall', ''), ('recall', '/exact'), ('relevance', ''), ('exact_match', ''),
      ('recall', '/image_only'), ('recall', '/cold'), ('scann_neighbour_recall', '')]}
  search_keys = {'search/exhaustive', 'search/num_items', 'perf/search/scann_qps', 'perf/search/exact_qps',
                 'perf/search/scann_build_seconds'}
  assert set(out) == expected_keys | search_keys
  # 40 items: ScaNN scored every item exactly, and the results say so.
  assert out['search/exhaustive'] == 1.0 and out['search/num_items'] == 40
  assert out['perf/search/scann_qps'] > 0 and out['perf/search/exact_qps'] > 0
  assert out['recall@1'] == out['recall@1/exact'] == pytest.approx(0.75)
  assert out['recall@1/image_only'] == pytest.approx(0.75)
  assert out['recall@1/cold'] == 1.0
  assert out['relevance@1'] == out['exact_match@1'] == 1.0
  assert out['scann_neighbour_recall@1'] == out['scann_neighbour_recall@1000'] == 1.0
  # K = 1000 is computed at N = 40: every target is found, every grade seen.
  assert out['recall@1000'] == out['recall@1000/exact'] == out['recall@1000/image_only'] == 1.0
  assert out['relevance@1000'] == pytest.approx(2 / 39)
  assert out['exact_match@1000'] == pytest.approx(1 / 39)
  assert set(result.timings) == {'exact', 'scann_build', 'scann_search', 'metrics'}
  # The rankings come back with the metrics: K = min(1000, N) columns, each query's planted
  # item (its own vector) first, and the oracle's equal to ScaNN's here.
  assert result.ids.shape == result.exact_ids.shape == (10, 40)
  np.testing.assert_array_equal(result.ids[:, 0], result.exact_ids[:, 0])
  np.testing.assert_array_equal(result.exact_ids[:, 0], 2 * np.arange(10))
  with pytest.raises(ValueError, match='eval queries'):
    evaluator.run(queries[:5], items)
  with pytest.raises(ValueError, match='same D'):
    evaluator.run(queries, items[:, :8])


def test_evaluator_scann_overrides_make_search_approximate():
  """A reorder pool below N (an override, as config eval.scann_params.reorder passes it) makes
  the search approximate: exhaustive 0, and neighbour recall is ScaNN's against exact."""
  eval_set, queries, items = _planted_eval_set()
  result = retrieval.RetrievalEvaluator(eval_set, ks=(1, 10), scann_params={
      'reorder': 12, 'num_leaves': None}).run(queries, items)
  out = result.metrics
  assert out['search/exhaustive'] == 0.0
  assert out['scann_neighbour_recall@10'] == pytest.approx(search.neighbour_recall(
      result.ids[:, :10], result.exact_ids[:, :10]))


def test_evaluator_without_scann_and_ranking_baseline():
  eval_set, queries, items = _planted_eval_set()
  result = retrieval.RetrievalEvaluator(eval_set, ks=(1,), scann=False).run(queries, items)
  out = result.metrics
  np.testing.assert_array_equal(result.ids, result.exact_ids)
  assert 'scann_neighbour_recall@1' not in out and out['recall@1'] == pytest.approx(0.75)
  assert 'search/exhaustive' not in out and out['perf/search/exact_qps'] > 0
  # A ranking that retrieves nothing but one padded target: -1 slots grade as unknown.
  ids = np.full((10, 3), -1)
  ids[0, 0] = 0
  ranked = retrieval.evaluate_ranking(ids, eval_set, (1, 3), prefix='bm25/')
  assert ranked['bm25/recall@3'] == pytest.approx(0.1)
  assert ranked['bm25/recall@3/image_only'] == pytest.approx(1 / 4)
  assert ranked['bm25/relevance@3'] == 1.0  # only query 0 has a known grade
  with pytest.raises(ValueError, match='rows'):
    retrieval.evaluate_ranking(ids[:5], eval_set, (1,))


def test_results_table_says_when_search_was_exhaustive():
  from mmret.jobs import results  # pylint: disable=g-import-not-at-top
  text = results.format_results({'recall@10': 0.5, 'search/exhaustive': 1.0,
                                 'baseline/random_init/search/exhaustive': 1.0,
                                 'id_only/search/exhaustive': 0.0})
  note = text.splitlines()[-1]
  assert note.startswith('note: ScaNN search was exhaustive (baseline/random_init/, model)')
  assert 'note:' not in results.format_results({'search/exhaustive': 0.0})


def test_results_table_says_when_k_covers_the_catalog():
  from mmret.jobs import results  # pylint: disable=g-import-not-at-top
  text = results.format_results({'recall@10': 0.5, 'recall@100': 0.9, 'recall@1000': 1.0,
                                 'search/num_items': 200.0})
  assert text.splitlines()[-1] == ('note: K >= the catalog (200 items) at @1000: recall there '
                                   'counts every item and is 1.0 by construction, not a '
                                   'measurement.')
  text = results.format_results({'recall@10': 0.5, 'recall@100': 0.9,
                                 'search/num_items': 100.0})
  assert text.splitlines()[-1].startswith('note: K >= the catalog (100 items) at @100:')
  assert 'note:' not in results.format_results({'recall@10': 0.5, 'search/num_items': 3000.0})
