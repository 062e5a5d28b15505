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


def training_rows(dataset: records.Dataset, queries: Sequence[str], *, split: str = 'train',
                  exclude_queries: frozenset[int] = frozenset(),
                  only: frozenset[tuple[int, int]] | None = None) -> np.ndarray:
  """bool [rows of `split` in the prepared dataset]: the rows that are training pairs.

  A row is kept when its interaction is a positive (records.Dataset.positive), its query's
  index into `queries` (the train query vocabulary; -1 for a query not in it) is not in
  exclude_queries (the validation split) and, with `only` (most_clicked_pairs), its
  (query_index, item_index) is in it. Rows are numbered as tfds_builder writes the split
  (InteractionColumns.split_rows), so the pipeline shuffles row numbers and decodes only the
  rows it keeps.
  """
  cols = dataset.columns()
  rows = cols.split_rows(split)
  query = cols.rows({q: i for i, q in enumerate(queries)})[rows]
  keep = cols.positive[rows] & ~np.isin(query, np.fromiter(exclude_queries, np.int64))
  if only is not None:
    n = max(len(dataset.items), 1)
    codes = np.array([q * n + i for q, i in only], np.int64)
    keep &= np.isin(query * n + cols.item[rows], codes) & (query >= 0)
  return keep


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

