"""ROC-AUC by ranks (the Mann–Whitney U form), ties counted as one half.

AUC = P(score of a random positive > score of a random negative) + 0.5 * P(equal)
    = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos * n_neg),
with ranks 1..n over all scores and tied scores sharing their average rank. O(n log n), so it
serves the engagement and relevance AUCs over every eval-day impression (DESIGN.md §4, §5).
"""

import numpy as np


def average_ranks(scores: np.ndarray) -> np.ndarray:
  """float64 [n] ranks 1..n of `scores` [n], ties given the mean of the ranks they span."""
  scores = np.asarray(scores, np.float64).ravel()
  order = np.argsort(scores, kind='mergesort')
  sorted_scores = scores[order]
  # Start of each run of equal scores, and each element's run.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  run = np.cumsum(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]) - 1
  ends = np.r_[starts[1:], scores.size]           # exclusive
  mean_rank = (starts + 1 + ends) / 2.0            # mean of ranks starts+1 .. ends
  ranks = np.empty(scores.size, np.float64)
  ranks[order] = mean_rank[run]
  return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray, where: np.ndarray | None = None) -> float:
  """ROC-AUC of binary `labels` [n] (bool or 0/1) under `scores` [n]; `where` [n] selects rows.

  Returns NaN when the selected rows hold only one class (the AUC is undefined there).
  """
  labels = np.asarray(labels).ravel().astype(bool)
  scores = np.asarray(scores, np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape} differ in shape.')
  if where is not None:
    keep = np.asarray(where, bool).ravel()
    labels, scores = labels[keep], scores[keep]
  if not np.all(np.isfinite(scores)):
    raise ValueError('roc_auc: scores must be finite.')
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks = average_ranks(scores)
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))
