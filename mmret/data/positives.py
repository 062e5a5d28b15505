"""Which training pairs are positives: every clicked pair, or the source's one per query.

DESIGN.md §1: the source pre-trains on the most-clicked item of each query; mmret's default
takes every clicked (or bought, or relevant-judged) pair. `data.positives` selects:
  'all'           every positive interaction of the train split (records.Dataset.positive)
  'most_clicked'  per train query, only the pairs of its item with the most positive train
                  interactions (ties: the lower catalog index), as in the source
"""

from collections.abc import Sequence

from mmret.data import records

CHOICES = ('all', 'most_clicked')  # config.data.positives


def most_clicked_pairs(dataset: records.Dataset, queries: Sequence[str]
                       ) -> frozenset[tuple[int, int]]:
  """(query_index into `queries`, item_index) of each train query's most-clicked item."""
  index = dataset.item_index()
  position = {q: i for i, q in enumerate(queries)}
  counts: dict[int, dict[int, int]] = {}
  for x, split in zip(dataset.interactions, dataset.splits()):
    if split == 'train' and dataset.positive(x) and x.query in position:
      per_item = counts.setdefault(position[x.query], {})
      per_item[index[x.item_id]] = per_item.get(index[x.item_id], 0) + 1
  # max over (count, -item): the most clicked, then the lowest index.
  return frozenset((q, max(items, key=lambda i, c=items: (c[i], -i)))
                   for q, items in counts.items())


def check(choice: str) -> str:
  if choice not in CHOICES:
    raise ValueError(f'data.positives={choice!r}: choose from {CHOICES}.')
  return choice

