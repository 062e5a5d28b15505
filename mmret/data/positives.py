"""Which training pairs are positives: every clicked pair, or the source's one per query.

DESIGN.md §1: the source pre-trains on the most-clicked item of each query; mmret's default
takes every clicked (or bought, or relevant-judged) pair. `data.positives` selects:
  'all'           every positive interaction of the train split (records.Dataset.positive)
  'most_clicked'  per train query, only the pairs of its item with the most positive train
                  interactions (ties: the lower catalog index), as in the source
"""

from collections.abc import Sequence

import numpy as np

from mmret.data import records

CHOICES = ('all', 'most_clicked')  # config.data.positives


def most_clicked_pairs(dataset: records.Dataset, queries: Sequence[str]
                       ) -> frozenset[tuple[int, int]]:
  """(query_index into `queries`, item_index) of each train query's most-clicked item."""
  cols = dataset.columns()
  n = max(len(dataset.items), 1)
  row = cols.rows({q: i for i, q in enumerate(queries)})
  hits = (row >= 0) & ~cols.is_eval & cols.positive
  pairs, counts = np.unique(row[hits] * n + cols.item[hits], return_counts=True)
  # Per query the most clicked item, then the lowest index: sort by (query, -count, item).
  order = np.lexsort((pairs % n, -counts, pairs // n))
  pairs = pairs[order]
  first = np.ones(pairs.size, bool)
  first[1:] = pairs[1:] // n != pairs[:-1] // n
  return frozenset(zip((pairs[first] // n).tolist(), (pairs[first] % n).tolist()))


def check(choice: str) -> str:
  if choice not in CHOICES:
    raise ValueError(f'data.positives={choice!r}: choose from {CHOICES}.')
  return choice

