"""ROC-AUC (mmret.evaluate.metrics.roc_auc, as the engagement job uses it) against the pairwise
definition, ties counted as one half."""

import numpy as np
import pytest

from mmret.evaluate import metrics


def _pairwise_auc(labels, scores):
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


def test_hand_computed():
  # pos {0.8, 0.4}, neg {0.4, 0.1}: pairs 1 + 1 + 0.5 + 1 = 3.5 of 4.
  assert metrics.roc_auc([0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
  assert metrics.roc_auc([1.0, 0.0], [1, 0]) == 1.0
  assert metrics.roc_auc([1.0, 0.0], [0, 1]) == 0.0
  assert metrics.roc_auc([0.5] * 4, [1, 0, 1, 0]) == 0.5  # all tied


@pytest.mark.parametrize('seed', range(5))
def test_matches_pairwise_reference_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 200))
  scores = rng.integers(0, 6, n).astype(np.float64)  # few distinct values: many ties
  labels = rng.random(n) < 0.3
  labels[0], labels[1] = True, False
  assert metrics.roc_auc(scores, labels) == pytest.approx(_pairwise_auc(labels, scores),
                                                         abs=1e-12)


def test_where_and_degenerate_cases():
  labels = np.array([1, 0, 1, 0, 1])
  scores = np.array([0.9, 0.8, 0.1, 0.7, 0.95])
  where = np.array([True, True, True, True, False])
  assert metrics.roc_auc(scores, labels, where=where) == pytest.approx(
      _pairwise_auc(labels[:4], scores[:4]))
  assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))  # one class only
  with pytest.raises(ValueError, match='finite'):
    metrics.roc_auc([np.nan, 0.0], [1, 0])
