"""The retrieval evaluator shared by every stage: vectors -> top-K -> Recall@K / Relevance@K.

DESIGN.md §5: per eval-day query, the target set is every item clicked or bought that day; the
top-K items come from nearest-neighbour search over the extracted query and item vectors, with
ScaNN as the simulated online engine and exact search as the oracle.

The model enters only through its vectors (mmret.evaluate.vectors extracts them):

  evaluator = RetrievalEvaluator(eval_set, ks=(10, 100, 1000))
  result = evaluator.run(query_vectors, item_vectors)
  result.metrics    # {'recall@10': ..., 'recall@10/exact': ..., ...}
  result.ids        # the ranking the metrics were computed on; result.exact_ids: the oracle's

Metric keys for each requested K in ks (K is named as requested but computed at min(K, N), so a
catalog of 300 items reports recall@1000 as its recall@300 and keys stay stable across data):
  recall@K                   ScaNN top-K vs the target sets (queries with >= 1 target)
  recall@K/exact             the same with exact search
  relevance@K                share of ScaNN top-K items graded >= 1 (exact or same category)
  exact_match@K          share graded 2 (exact match); unknown grades are left out
  ndcg@K                     nDCG@K of the ScaNN top-K over the catalog's ideal top-K (linear
                             gains eval_set.gain; unjudged = 0), if the eval set has gains
  ndcg@K/judged              nDCG@K of re-ranking each query's judged items by the model's
                             score (eval_set.judged), if the eval set has judgements
  recall@K/image_only        ScaNN recall on image-only targets (queries with >= 1 of them)
  recall@K/image_only_relevant  ScaNN recall of the catalog's exact matches through an attribute
                             only the image shows (eval_set.image_only_relevant, if present)
  recall@K/<name>            ScaNN recall on each extra target set (e.g. cold items)
  scann_neighbour_recall@K   |ScaNN top-K ∩ exact top-K| / K
  search/exhaustive          1 when the ScaNN search is exact search by construction (a catalog
                             under search.EXHAUSTIVE_BELOW items, or K >= N): its figures are
                             then no measurement of approximate search; else 0
  search/num_items           N, the catalog size searched: Recall@K for K >= N counts the whole
                             catalog (1.0 by construction), and the results table says so
  perf/search/scann_qps, perf/search/exact_qps, perf/search/scann_build_seconds
                             eval queries/s of each searcher (host wall clock, exact search's
                             compilation included) and the ScaNN index build time
With scann=False the unsuffixed metrics come from exact search and the ScaNN-only key is absent.
The eval set is duck-typed: queries, targets, image_only_targets and grade(query_idx [Q],
item_idx [Q, K]) -> int [Q, K] (mmret.data.evalset.EvalSet).
"""

from collections.abc import Mapping, Sequence
import dataclasses
import time
from typing import Any

import numpy as np

from mmret.evaluate import metrics
from mmret.evaluate import progress
from mmret.evaluate import search

# grade() is called on this many queries at a time: grading materialises [rows, K, attributes]
# intermediates, which for 100k queries x K=1000 would not fit in host memory at once.
_GRADE_ROWS = 1024


def grade_ranking(ids: np.ndarray, eval_set: Any) -> np.ndarray:
  """ids int [Q, K] (-1 = empty) -> int8 grades [Q, K], -1 for empty slots and unknown pairs.

  grade() only ever sees valid item indices: empty slots are graded as item 0 and masked.
  """
  ids = np.asarray(ids)
  grades = np.full(ids.shape, -1, np.int8)
  for start in range(0, ids.shape[0], _GRADE_ROWS):
    block = ids[start:start + _GRADE_ROWS]
    rows = np.arange(start, start + block.shape[0])
    graded = np.asarray(eval_set.grade(rows, np.where(block >= 0, block, 0)), np.int8)
    grades[start:start + block.shape[0]] = np.where(block >= 0, graded, -1)
  return grades


def evaluate_ranking(ids: np.ndarray, eval_set: Any, ks: Sequence[int],
                     prefix: str = '') -> dict[str, float]:
  """Recall / relevance / image-only recall of any ranking (a searcher's, BM25's, random).

  Args:
    ids: int [Q, K'] best-first item indices per eval query, -1 = empty slot; K' may be less
      than max(ks) (a small catalog), and each K is then computed at min(K, K').
    eval_set: the eval set (duck-typed, see the module docstring).
    ks: cut-offs.
    prefix: prepended to every key, e.g. 'bm25/' -> 'bm25/recall@10'.

  Returns:
    {prefix + 'recall@K', 'relevance@K', 'exact_match@K', 'recall@K/image_only'} for K in ks,
    and prefix + 'ndcg@K' when the eval set has gains.
  """
  ids = np.asarray(ids)
  if ids.shape[0] != len(eval_set.queries):
    raise ValueError(f'ranking has {ids.shape[0]} rows for {len(eval_set.queries)} queries.')
  grades = grade_ranking(ids[:, :max(ks)], eval_set)
  out = {}
  for k in ks:
    out[f'{prefix}recall@{k}'] = metrics.recall_at_k(ids, eval_set.targets, k)
    for name, value in metrics.relevance_at_k(grades, k).items():
      out[prefix + name] = value
    out[f'{prefix}recall@{k}/image_only'] = metrics.recall_at_k(
        ids, eval_set.image_only_targets, k)
    if getattr(eval_set, 'image_only_relevant', None) is not None:
      out[f'{prefix}recall@{k}/image_only_relevant'] = metrics.recall_at_k(
          ids, eval_set.image_only_relevant, k)
  if hasattr(eval_set, 'gain'):
    out.update(ranking_ndcg(ids, eval_set, ks, prefix))
  return out


def ranking_ndcg(ids: np.ndarray, eval_set: Any, ks: Sequence[int], prefix: str = ''
                 ) -> dict[str, float]:
  """ids int [Q, K'] (-1 empty) -> {prefix + 'ndcg@K'}: against each query's ideal top-K."""
  ids = np.asarray(ids)[:, :max(ks)]
  gains = np.zeros(ids.shape, np.float32)
  for start in range(0, ids.shape[0], _GRADE_ROWS):
    block = ids[start:start + _GRADE_ROWS]
    rows = np.arange(start, start + block.shape[0])
    g = eval_set.gain(rows, np.where(block >= 0, block, 0))
    gains[start:start + block.shape[0]] = np.where(block >= 0, g, 0.0)
  ideal = eval_set.ideal_gains(max(ks))
  return {f'{prefix}ndcg@{k}': metrics.ndcg_at_k(gains, ideal, k) for k in ks}


def judged_ndcg(queries: np.ndarray, items: np.ndarray, eval_set: Any, ks: Sequence[int]
                ) -> dict[str, float]:
  """queries float [Q, D], items float [N, D] -> {'ndcg@K/judged'}: each query's judged items
  re-ranked by the dot product of their vectors (eval_set.judged())."""
  q, i, gains = eval_set.judged()
  scores = np.einsum('pd,pd->p', queries[q], items[i]) if q.size else np.zeros(0)
  return {f'ndcg@{k}/judged': metrics.ndcg_rerank(q, scores, gains, k) for k in ks}


def listed_judged_ndcg(ids: np.ndarray, scores: np.ndarray, eval_set: Any, ks: Sequence[int],
                       prefix: str = '') -> dict[str, float]:
  """{prefix + 'ndcg@K/judged'} of a searcher that only scores its top list (BM25): ids int
  [Q, K'] (-1 empty) with their scores [Q, K']; a judged item outside the list ranks last."""
  q, i, gains = eval_set.judged()
  ids = np.asarray(ids, np.int64)
  n = eval_set.num_items
  listed = ids >= 0
  keys = (np.arange(ids.shape[0])[:, None] * n + ids)[listed]
  values = np.asarray(scores, np.float64)[listed]
  order = np.argsort(keys)
  keys, values = keys[order], values[order]
  wanted = q * n + i
  pos = np.clip(np.searchsorted(keys, wanted), 0, max(keys.size - 1, 0))
  found = keys[pos] == wanted if keys.size else np.zeros(wanted.shape, bool)
  pair_scores = np.where(found, values[pos] if keys.size else 0.0, -np.inf)
  return {f'{prefix}ndcg@{k}/judged': metrics.ndcg_rerank(q, pair_scores, gains, k) for k in ks}


@dataclasses.dataclass
class Retrieval:
  """What RetrievalEvaluator.run returns.

  metrics: the flat metrics dict (module docstring). ids: int [Q, K] the reported ranking
  (ScaNN's, or exact search's with scann=False); exact_ids: int [Q, K] exact search's (the
  oracle), K = min(max(ks), N). timings: seconds per phase ('exact', 'scann_build',
  'scann_search', 'metrics'), kept out of the metrics so that their keys stay fixed.
  """
  metrics: dict[str, float]
  ids: np.ndarray
  exact_ids: np.ndarray
  timings: dict[str, float]


class RetrievalEvaluator:
  """Recall@K and Relevance@K of query and item vectors on an eval set.

    evaluator = RetrievalEvaluator(eval_set, ks=(10, 100), scann=True)
    result = evaluator.run(query_vectors, item_vectors)   # Retrieval: metrics and rankings
  """

  def __init__(self, eval_set: Any, *, ks: Sequence[int] = (10, 50, 100, 1000),
               scann: bool = True,
               extra_target_sets: Mapping[str, Sequence[np.ndarray]] | None = None,
               scann_params: Mapping[str, int | None] | None = None):
    """Args:
      eval_set: the eval set (duck-typed, see the module docstring).
      ks: cut-offs K, each > 0.
      scann: also search with ScaNN (the reported metrics) besides exact search (the oracle).
      extra_target_sets: name -> Q target arrays, reported as 'recall@K/<name>'.
      scann_params: overrides of search.scann_params' size rule (num_leaves,
        leaves_to_search, reorder, training_sample_size); None values keep the rule.
    """
    if not ks or any(int(k) <= 0 for k in ks):
      raise ValueError(f'ks must be positive integers, got {ks}.')
    extra_target_sets = dict(extra_target_sets or {})
    for name, sets in extra_target_sets.items():
      if name in ('exact', 'image_only'):
        raise ValueError(f'extra target set name {name!r} clashes with a built-in metric.')
      if len(sets) != len(eval_set.queries):
        raise ValueError(f'extra target set {name!r} has {len(sets)} entries for '
                         f'{len(eval_set.queries)} queries.')
    self.eval_set = eval_set
    self.ks = tuple(int(k) for k in ks)
    self.scann = scann
    self.extra_target_sets = extra_target_sets
    self.scann_params = {k: v for k, v in (scann_params or {}).items() if v is not None}

  def _check(self, queries: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries = np.asarray(queries, np.float32)
    items = np.asarray(items, np.float32)
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
      raise ValueError(f'query vectors {queries.shape} and item vectors {items.shape} must be '
                       '[Q, D] and [N, D] with the same D.')
    if queries.shape[0] != len(self.eval_set.queries):
      raise ValueError(f'{queries.shape[0]} query vectors for '
                       f'{len(self.eval_set.queries)} eval queries.')
    return queries, items

  def run(self, queries: np.ndarray, items: np.ndarray) -> Retrieval:
    """queries float [Q, D] (eval_set.queries, in order), items float [N, D] (the catalog, in
    catalog order) -> metrics and rankings."""
    queries, items = self._check(queries, items)
    timings = {}
    k_max = min(max(self.ks), items.shape[0])

    tic = time.perf_counter()
    _, exact_ids = search.exact_topk(queries, items, k_max)
    timings['exact'] = time.perf_counter() - tic
    ids = exact_ids
    search_info = {'search/num_items': float(items.shape[0]),
                   'perf/search/exact_qps': len(queries) / max(timings['exact'], 1e-9)}
    if self.scann:
      tic = time.perf_counter()
      index = search.build_scann(items, num_neighbors=k_max, **self.scann_params)
      timings['scann_build'] = time.perf_counter() - tic
      tic = time.perf_counter()
      _, ids = index.search(queries, k_max)
      timings['scann_search'] = time.perf_counter() - tic
      search_info.update({
          'search/exhaustive': float(index.params.exhaustive),
          'perf/search/scann_qps': len(queries) / max(timings['scann_search'], 1e-9),
          'perf/search/scann_build_seconds': timings['scann_build']})

    tic = time.perf_counter()
    out = evaluate_ranking(ids, self.eval_set, self.ks)
    out.update(search_info)
    if hasattr(self.eval_set, 'judged'):
      out.update(judged_ndcg(queries, items, self.eval_set, self.ks))
    for k in self.ks:
      out[f'recall@{k}/exact'] = metrics.recall_at_k(exact_ids, self.eval_set.targets, k)
      for name, target_sets in self.extra_target_sets.items():
        out[f'recall@{k}/{name}'] = metrics.recall_at_k(ids, target_sets, k)
      if self.scann:
        capped = min(k, k_max)
        out[f'scann_neighbour_recall@{k}'] = search.neighbour_recall(
            ids[:, :capped], exact_ids[:, :capped])
    timings['metrics'] = time.perf_counter() - tic
    progress.searched(queries.shape[0], items.shape[0], k_max, timings)
    return Retrieval(metrics=out, ids=np.asarray(ids), exact_ids=np.asarray(exact_ids),
                     timings=timings)
