"""Retrieval metrics broken down by item group (head / tail / cold, mmret/jobs/recall/data.py).

  recall@K/<group>     recall of the targets in the group (RetrievalEvaluator's
                       extra_target_sets; queries without such a target are left out)
  relevance@K/<group>  relevance@K over the retrieved top-K items of the group only: the share
                       graded >= 1 among those with a known grade, averaged over queries that
                       retrieved at least one graded item of the group
  share@K/<group>      share of the top-K retrieved items that belong to the group
"""

from collections.abc import Mapping, Sequence

import numpy as np

from mmret.evaluate import metrics
from mmret.evaluate import retrieval


def group_target_sets(targets: Sequence[np.ndarray], groups: Mapping[str, np.ndarray]
                      ) -> dict[str, list[np.ndarray]]:
  """Per group name, each query's targets restricted to the group's items (bool [N] masks)."""
  return {name: [t[member[t]] for t in targets] for name, member in groups.items()}


def group_ranking_metrics(ids: np.ndarray, eval_set, groups: Mapping[str, np.ndarray],
                          ks: Sequence[int]) -> dict[str, float]:
  """ids int [Q, K] best first (-1 empty) -> relevance@K/<group> and share@K/<group>."""
  ids = np.asarray(ids)
  grades = retrieval.grade_ranking(ids[:, :max(ks)], eval_set)
  safe = np.where(ids >= 0, ids, 0)
  out = {}
  for name, member in groups.items():
    inside = member[safe] & (ids >= 0)
    masked = np.where(inside[:, :grades.shape[1]], grades, -1)
    for k in ks:
      out[f'relevance@{k}/{name}'] = metrics.relevance_at_k(masked, k)[f'relevance@{k}']
      kk = min(k, ids.shape[1])
      out[f'share@{k}/{name}'] = float(np.mean(inside[:, :kk].sum(axis=1) / max(kk, 1)))
  return out
