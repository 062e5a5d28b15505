"""Graded (query, item) relevance from attributes: exact / partial / irrelevant, vectorised.

Ground truth for any dataset whose queries and items carry attributes (SynthShop writes them; a
bring-your-own dataset may): a query's attributes, e.g. {'category': 'dress', 'color': 'white'},
are compared with an item's by exact string equality.
  2  exact:      every attribute the query names equals the item's;
  1  partial:    same category, but not every attribute matches;
  0  irrelevant: otherwise (other category, or no category to share).
Nothing here knows SynthShop: the evaluator uses it for every dataset.

Vectorised form: attributes become integer codes, one column per attribute name with the
category in column 0; a query's -1 means "not named" (ignored) and an item's -2 "missing"
(never equal to a named value).
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

NOT_NAMED = -1   # query code: the query does not name this attribute
MISSING = -2     # item code: the item lacks this attribute
UNGRADED = -1    # grade of a query that names no attribute at all


def _check(attrs: Mapping[str, str], side: str) -> None:
  if not isinstance(attrs, Mapping):
    raise TypeError(f'{side} attributes must be a mapping, got {type(attrs).__name__}.')
  for key, value in attrs.items():
    if not isinstance(value, str):
      raise TypeError(f'{side} attribute {key!r} must be a string, got {value!r}.')


def grade(query_attrs: Mapping[str, str], item_attrs: Mapping[str, str]) -> int:
  """2 exact, 1 partial (same category, not every attribute), 0 irrelevant."""
  _check(query_attrs, 'query')
  _check(item_attrs, 'item')
  if not query_attrs:
    raise ValueError('query attributes are empty: nothing to grade against.')
  if all(item_attrs.get(k) == v for k, v in query_attrs.items()):
    return 2
  return 1 if category_relevant(query_attrs, item_attrs) else 0


def category_relevant(query_attrs: Mapping[str, str], item_attrs: Mapping[str, str]) -> bool:
  """True when the query names a category and the item has that same category."""
  _check(query_attrs, 'query')
  _check(item_attrs, 'item')
  return 'category' in query_attrs and item_attrs.get('category') == query_attrs['category']


def grade_codes(query_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
  """Vectorised grade over broadcastable code arrays.

  Args:
    query_codes: int [..., A], column 0 = category; NOT_NAMED (-1) where the query is silent.
    item_codes: int [..., A], same columns; MISSING (-2) where the item lacks the attribute.
  Returns:
    int8 [...]: 2 / 1 / 0, or UNGRADED (-1) for a query that names nothing.
  """
  query_codes, item_codes = np.asarray(query_codes), np.asarray(item_codes)
  named = query_codes >= 0
  exact = np.all((query_codes == item_codes) | ~named, axis=-1)
  same_category = named[..., 0] & (query_codes[..., 0] == item_codes[..., 0])
  out = np.where(exact, 2, np.where(same_category, 1, 0)).astype(np.int8)
  return np.where(named.any(axis=-1), out, UNGRADED).astype(np.int8)


class AttributeGrader:
  """Grades many (query, item) pairs of attribute dicts at once by encoding them as codes.

  grader = AttributeGrader(query_attrs, item_attrs)   # Q and N mappings
  grader.grade(query_idx [P], item_idx [P]) -> int8 [P]   (or [Q, 1] and [Q, K] -> [Q, K])
  """

  def __init__(self, query_attrs: Sequence[Mapping[str, str]],
               item_attrs: Sequence[Mapping[str, str]]):
    for a in query_attrs:
      _check(a, 'query')
    for a in item_attrs:
      _check(a, 'item')
    # Only attributes some query names matter; the category always leads.
    names = sorted({k for a in query_attrs for k in a} - {'category'})
    self.names = ('category', *names)
    vocab: dict[str, dict[str, int]] = {n: {} for n in self.names}

    def encode(attrs_list, absent):
      codes = np.full((len(attrs_list), len(self.names)), absent, np.int32)
      for row, attrs in enumerate(attrs_list):
        for col, name in enumerate(self.names):
          if name in attrs:
            codes[row, col] = vocab[name].setdefault(attrs[name], len(vocab[name]))
      return codes

    self.query_codes = encode(query_attrs, NOT_NAMED)   # int32 [Q, A]
    self.item_codes = encode(item_attrs, MISSING)       # int32 [N, A]

  def grade(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """int8 with the broadcast shape of the two index arrays; UNGRADED for attribute-less queries."""
    return grade_codes(self.query_codes[np.asarray(query_idx)],
                       self.item_codes[np.asarray(item_idx)])

  def category_relevant(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """bool, broadcast shape: the query names a category and the item shares it."""
    q = self.query_codes[np.asarray(query_idx), 0]
    return (q >= 0) & (q == self.item_codes[np.asarray(item_idx), 0])


def image_only_match(query_attrs: Mapping[str, str], item_attrs: Mapping[str, str],
                     title_omits: Iterable[str]) -> bool:
  """True when a non-category attribute the query names matches the item but is not in its title."""
  omitted = set(title_omits)
  return any(k != 'category' and k in omitted and item_attrs.get(k) == v
             for k, v in query_attrs.items())
