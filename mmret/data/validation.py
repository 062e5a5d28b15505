"""The validation split: training queries held out by a fixed hash, for model selection.

Fine-tuning a pretrained encoder on little labelled data can make it worse (issue 14), so a run
evaluates on held-out *training* queries every few steps and keeps the best parameters. The eval
queries are never among them: selecting on the eval set would report a tuned, not a measured,
score. A query is held out when the first 8 bytes of sha256(salt + query), read as a fraction of
2^64, fall below `share`: the same queries for every seed, run and machine, and a query's
membership does not depend on which other queries the log holds. On a small log a floor of
`min_queries` (at most a quarter of the candidates) tops the split up in the same hash order.

    held_out = validation_queries(dataset, share=0.1, min_queries=50)  # sorted query strings
    val_set = evalset.build_eval_set(dataset, split='train', queries=held_out)
"""

import hashlib

import numpy as np

from mmret.data import records

SALT = 'mmret/validation/v1'


def query_fraction(query: str, salt: str = SALT) -> float:
  """The query's fixed position in [0, 1): sha256(salt + query), first 8 bytes / 2^64."""
  digest = hashlib.sha256((salt + query).encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def validation_queries(dataset: records.Dataset, share: float, salt: str = SALT, *,
                       min_queries: int = 0) -> list[str]:
  """Sorted train queries with a positive on the train split, never seen on the eval split,
  whose query_fraction is below `share`; at least min(min_queries, candidates // 4) of them.

  The floor keeps a small log's validation split meaningful (10% of 90 candidate queries is 9,
  too few to tell a better step from noise) without taking more than a quarter of the training
  queries: below it, the candidates with the lowest query_fraction are added, so the split is
  still a fixed function of the log, and a query held out at `share` always stays held out.
  """
  if not 0.0 <= share < 1.0:
    raise ValueError(f'validation share {share} must be in [0, 1).')
  if isinstance(min_queries, bool) or not isinstance(min_queries, int) or min_queries < 0:
    raise ValueError(f'validation min_queries {min_queries!r} must be an int >= 0.')
  cols = dataset.columns()
  evaluated = np.zeros(len(cols.queries), bool)
  evaluated[cols.query[cols.is_eval]] = True
  train = np.zeros(len(cols.queries), bool)
  train[cols.query[~cols.is_eval & cols.positive]] = True
  candidates = sorted((cols.queries[q] for q in np.flatnonzero(train & ~evaluated).tolist()),
                      key=lambda q: (query_fraction(q, salt), q))
  if not share:
    return []
  by_share = sum(query_fraction(q, salt) < share for q in candidates)
  count = max(by_share, min(min_queries, len(candidates) // 4))
  return sorted(candidates[:count])
