"""Ranking metrics: Recall@K against target sets, graded Relevance@K, nDCG@K, and ROC-AUC.

DESIGN.md §5. A ranking is int ids [Q, K], best first, one row per eval query; -1 marks an empty
slot (a searcher or BM25 found fewer than K items) and counts as nothing retrieved. Rankings
hold no duplicate ids (every searcher here returns distinct items). Each metric is a mean over
the queries it is defined for and is NaN when there are none, so an undefined value is never
mistaken for a bad one.
"""

from collections.abc import Sequence

import numpy as np


def target_hits(ids: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
  """ids int [Q, K], targets: Q arrays of item indices -> bool [Q, K], ids[q, j] in targets[q].

  Vectorised over queries: (query, item) pairs become int64 keys q * width + item, so one
  np.isin replaces Q small intersections. -1 never matches.
  """
  ids = np.asarray(ids, np.int64)
  q = ids.shape[0]
  if len(targets) != q:
    raise ValueError(f'{q} ranking rows but {len(targets)} target sets.')
  lengths = np.array([len(t) for t in targets], np.int64)
  flat = (np.concatenate([np.asarray(t, np.int64).ravel() for t in targets]) if q
          else np.zeros(0, np.int64))
  width = int(max(ids.max(initial=0), flat.max(initial=0))) + 1
  target_keys = np.repeat(np.arange(q, dtype=np.int64), lengths) * width + flat
  hits = np.isin(np.arange(q, dtype=np.int64)[:, None] * width + ids, target_keys)
  return hits & (ids >= 0)


def recall_at_k(ids: np.ndarray, targets: Sequence[np.ndarray], k: int) -> float:
  """Mean over queries with >= 1 target of |top-k ∩ targets| / |targets|.

  Args:
    ids: int [Q, K] ranking; -1 = empty slot. k > K uses all K columns (the ranking simply
      holds no more items), so recall@k of a short ranking is what it retrieved.
    targets: Q arrays of distinct target item indices (eval-day clicks and purchases).
    k: cut-off.

  Returns:
    The mean recall, NaN if no query has a target.
  """
  ids = np.asarray(ids)[:, :k]
  sizes = np.array([len(np.unique(t)) for t in targets], np.float64)
  has_target = sizes > 0
  if not has_target.any():
    return float('nan')
  found = target_hits(ids, targets).sum(axis=1)
  return float(np.mean(found[has_target] / sizes[has_target]))


def relevance_at_k(grades: np.ndarray, k: int) -> dict[str, float]:
  """Graded relevance of the top-k retrieved items.

  Args:
    grades: int [Q, K] grade of each retrieved item: 2 exact match, 1 partial (same category),
      0 irrelevant, -1 unknown or empty slot.
    k: cut-off; k > K uses all K columns.

  Returns:
    {'relevance@k': mean over queries of the share of known-grade top-k items with grade >= 1,
     'exact_match@k': the same share with grade 2}. Unknown grades leave the denominator;
    queries with no known grade in their top-k leave the mean (NaN if none is left).
  """
  grades = np.asarray(grades)[:, :k]
  known = (grades >= 0).sum(axis=1)
  graded = known > 0
  out = {}
  for name, threshold in (('relevance', 1), ('exact_match', 2)):
    if graded.any():
      share = (grades >= threshold).sum(axis=1)[graded] / known[graded]
      out[f'{name}@{k}'] = float(np.mean(share))
    else:
      out[f'{name}@{k}'] = float('nan')
  return out


def _discounts(positions: np.ndarray) -> np.ndarray:
  """0-based rank -> 1 / log2(rank + 2), the DCG discount (Jarvelin & Kekalainen 2002)."""
  return 1.0 / np.log2(np.asarray(positions, np.float64) + 2.0)


def ndcg_at_k(gains: np.ndarray, ideal_gains: np.ndarray, k: int) -> float:
  """nDCG@k of rankings over their ideal: DCG = sum_{j<k} gain_j / log2(j + 2), linear gains.

  Args:
    gains: float [Q, K] gain of each ranked item, best first (0 for an empty slot or an
      unjudged item); k > K uses all K columns.
    ideal_gains: float [Q, M] the gains the query could have earned (e.g. its best gains over
      the catalog), in any order; the ideal DCG takes the k largest.
    k: cut-off.

  Returns:
    Mean over queries with an ideal DCG > 0 of DCG / ideal DCG; NaN if no query has one.
  """
  gains = np.asarray(gains, np.float64)[:, :k]
  ideal = -np.sort(-np.asarray(ideal_gains, np.float64), axis=1)[:, :k]
  dcg = gains @ _discounts(np.arange(gains.shape[1])) if gains.size else np.zeros(len(gains))
  idcg = ideal @ _discounts(np.arange(ideal.shape[1])) if ideal.size else np.zeros(len(ideal))
  defined = idcg > 0
  if not defined.any():
    return float('nan')
  return float(np.mean(dcg[defined] / idcg[defined]))


def ndcg_rerank(query_idx: np.ndarray, scores: np.ndarray, gains: np.ndarray, k: int) -> float:
  """nDCG@k of re-ranking each query's judged items by score (ties: lower index first).

  Args:
    query_idx: int [P] the query of each judged pair.
    scores: float [P] the model's score of the pair (higher = ranked first).
    gains: float [P] the pair's judged gain.
    k: cut-off.

  Returns:
    Mean over queries whose judged gains are not all 0 of DCG@k(by score) / DCG@k(by gain);
    NaN if there is no such query.
  """
  query_idx = np.asarray(query_idx, np.int64)
  scores, gains = np.asarray(scores, np.float64), np.asarray(gains, np.float64)
  if not query_idx.size:
    return float('nan')
  num_queries = int(query_idx.max()) + 1

  def dcg(order_key: np.ndarray) -> np.ndarray:
    # Sort by query, then best first; a pair's rank is its offset from its query's first row.
    order = np.lexsort((-order_key, query_idx))
    q = query_idx[order]
    first = np.searchsorted(q, q)  # q is sorted: the row where each query starts
    rank = np.arange(q.size) - first
    contrib = np.where(rank < k, gains[order] * _discounts(rank), 0.0)
    return np.bincount(q, contrib, minlength=num_queries)

  actual, ideal = dcg(scores), dcg(gains)
  defined = ideal > 0
  if not defined.any():
    return float('nan')
  return float(np.mean(actual[defined] / ideal[defined]))


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, *,
            where: np.ndarray | None = None) -> float:
  """Weighted ROC-AUC: P(score of a positive > score of a negative), ties counting one half.

  The rank (Mann-Whitney) form with average ranks for ties, generalised to weights: each
  positive p and negative n form a pair of weight w_p * w_n. Sorting once makes this
  O(M log M) instead of O(M^2) pairs.

  Args:
    scores: float [M].
    labels: [M], truthy = positive.
    weights: optional float [M] >= 0 (e.g. query frequency); None = all 1.
    where: optional bool [M]: only these rows count (e.g. the graded ones).

  Returns:
    AUC in [0, 1]; NaN when either class has zero total weight (undefined there).
  """
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel().astype(bool)
  weights = (np.ones_like(scores) if weights is None
             else np.asarray(weights, np.float64).ravel())
  if not scores.shape == labels.shape == weights.shape:
    raise ValueError(f'shapes differ: scores {scores.shape}, labels {labels.shape}, '
                     f'weights {weights.shape}.')
  if where is not None:
    keep = np.asarray(where, bool).ravel()
    scores, labels, weights = scores[keep], labels[keep], weights[keep]
  if not np.all(np.isfinite(scores)):
    raise ValueError('roc_auc: scores must be finite.')
  pos_w = np.where(labels, weights, 0.0)
  neg_w = np.where(labels, 0.0, weights)
  total_pos, total_neg = pos_w.sum(), neg_w.sum()
  if total_pos <= 0 or total_neg <= 0:
    return float('nan')
  order = np.argsort(scores, kind='stable')
  sorted_scores = scores[order]
  # Tie groups: equal scores share one group id; sum the class weights per group.
  starts = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  group = np.cumsum(starts) - 1
  group_pos = np.bincount(group, pos_w[order])
  group_neg = np.bincount(group, neg_w[order])
  neg_below = np.cumsum(group_neg) - group_neg
  wins = np.sum(group_pos * (neg_below + 0.5 * group_neg))
  return float(wins / (total_pos * total_neg))
