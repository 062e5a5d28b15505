"""Judged-irrelevant items as hard negatives of their query (docs/DATA.md, judged data).

A judged set says, per query, which shown products are irrelevant: exactly the negatives a
retrieval model needs and in-batch sampling rarely finds. Stage-1 QIC adds them, per row, to the
in-batch negatives (mmret/jobs/pretrain/data.py, mmret/losses/contrastive.py).

    table = judged_negatives(dataset, queries)          # per query: its judged-irrelevant items
    items, mask = sample_judged_negatives(rng, table, query_index, num=1)   # [B, H] each

Only the train split is read (the eval judgements stay unseen), and an item is a negative of a
query only if no interaction of that pair, on any split, is positive or graded relevant: a pair
judged irrelevant once and relevant another time is not a negative.
"""

from collections.abc import Sequence

import numpy as np

from mmret.data import records


def judged_negatives(dataset: records.Dataset, queries: Sequence[str]) -> list[np.ndarray]:
  """Per query of `queries` (in order), the sorted int64 catalog indices judged irrelevant for
  it on the train split and never positive or relevant for it anywhere."""
  cols = dataset.columns()
  n = max(len(dataset.items), 1)
  row = cols.rows({q: i for i, q in enumerate(queries)})
  graded_relevant = ~np.isnan(cols.relevance) & ~cols.judged_irrelevant
  relevant = np.unique((row * n + cols.item)[(row >= 0) & (cols.positive | graded_relevant)])
  wanted = (row >= 0) & cols.judged_irrelevant & ~cols.is_eval
  irrelevant = np.setdiff1d(np.unique(row[wanted] * n + cols.item[wanted]), relevant)
  bounds = np.searchsorted(irrelevant // n, np.arange(len(queries) + 1))
  return [irrelevant[bounds[q]:bounds[q + 1]] % n for q in range(len(queries))]


def sample_judged_negatives(rng: np.random.Generator, table: Sequence[np.ndarray],
                            query_index: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws `num` judged negatives per row, uniformly with replacement from its query's list.

  Args:
    rng: numpy generator (seeded per step by the caller, so a resumed run draws the same).
    table: judged_negatives(...) over the query vocabulary.
    query_index: int [B] index into `table`; -1 (a query outside the vocabulary) draws none.
    num: H, negatives per row.
  Returns:
    items int32 [B, H] (0 where masked) and mask bool [B, H] (False for a query without any).
  """
  query_index = np.asarray(query_index)
  sizes = np.array([table[q].size if q >= 0 else 0 for q in query_index.tolist()], np.int64)
  # One uniform draw per slot, scaled to each row's list length (0 rows draw index 0, masked).
  picks = np.floor(rng.random((query_index.size, num)) * sizes[:, None]).astype(np.int64)
  items = np.zeros((query_index.size, num), np.int32)
  for row, q in enumerate(query_index.tolist()):
    if sizes[row]:
      items[row] = table[q][picks[row]]
  mask = np.broadcast_to((sizes > 0)[:, None], items.shape).copy()
  return items, mask
