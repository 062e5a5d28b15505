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
_KEY_LIMIT = 2.0 ** 62  # _row_keys packs a row's codes into one int64 below this many values


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

  # Whole-catalog questions (ideal nDCG gains, image-only ground truth) without grading Q x N
  # pairs (20G at 10k queries x 2M items): queries are grouped by the attributes they name, the
  # items' codes in those columns become one sorted key per item, and each query's exact
  # matches are a searchsorted range of it.

  def _groups(self):
    """Yields (query indices, item order int64 [N], sorted item keys [N], query keys) per set
    of named attributes (queries that name nothing are left out: they grade nothing)."""
    named = self.query_codes >= 0
    patterns, which = np.unique(named, axis=0, return_inverse=True)
    which = np.asarray(which).ravel()
    for p, pattern in enumerate(patterns):
      if not pattern.any():
        continue
      cols = np.flatnonzero(pattern)
      members = np.flatnonzero(which == p)
      item_keys, query_keys = _row_keys(self.item_codes[:, cols],
                                        self.query_codes[members][:, cols])
      order = np.argsort(item_keys, kind='stable')
      yield members, order, item_keys[order], query_keys

  def match_counts(self) -> tuple[np.ndarray, np.ndarray]:
    """(exact int64 [Q], partial int64 [Q]): per query, how many catalog items grade 2 and how
    many grade 1 (`grade_codes`), counted without grading every pair."""
    q = self.query_codes.shape[0]
    exact = np.zeros(q, np.int64)
    for members, _, keys, query_keys in self._groups():
      exact[members] = (np.searchsorted(keys, query_keys, 'right')
                        - np.searchsorted(keys, query_keys, 'left'))
    item_cat = self.item_codes[:, 0]
    per_category = np.bincount(item_cat[item_cat >= 0],
                               minlength=max(int(self.query_codes[:, 0].max(initial=-1)) + 1, 1))
    cat = self.query_codes[:, 0]
    # Grade >= 1: exact, or the same category; a query naming its category has its exact
    # matches inside that category.
    at_least_partial = np.where(cat >= 0, per_category[np.maximum(cat, 0)], exact)
    return exact, at_least_partial - exact

  def exact_items(self, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """{query index: sorted int64 item indices grading 2} for the queries in `wanted` that name
    an attribute."""
    wanted = set(np.asarray(wanted).tolist())
    out = {}
    for members, order, keys, query_keys in self._groups():
      lo = np.searchsorted(keys, query_keys, 'left')
      hi = np.searchsorted(keys, query_keys, 'right')
      for m, a, b in zip(members.tolist(), lo.tolist(), hi.tolist()):
        if m in wanted:
          out[m] = order[a:b]  # a stable sort keeps equal keys in item order
    return out


def _row_keys(items: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Codes int [N, C] and [M, C] (>= MISSING) -> int64 keys [N] and [M], one per row, equal iff
  the rows are equal (rows of either array)."""
  radix = np.maximum(items.max(axis=0, initial=0), queries.max(axis=0, initial=0)) - MISSING + 1
  if float(np.prod(radix.astype(np.float64))) >= _KEY_LIMIT:
    # Too many values to pack into an int64: rank the distinct rows instead (slower, exact).
    _, inverse = np.unique(np.concatenate([items, queries]), axis=0, return_inverse=True)
    inverse = np.asarray(inverse, np.int64).ravel()
    return inverse[:items.shape[0]], inverse[items.shape[0]:]
  keys = []
  for codes in (items, queries):
    k = np.zeros(codes.shape[0], np.int64)
    for col in range(codes.shape[1]):
      k = k * int(radix[col]) + (codes[:, col].astype(np.int64) - MISSING)
    keys.append(k)
  return keys[0], keys[1]


def image_only_match(query_attrs: Mapping[str, str], item_attrs: Mapping[str, str],
                     title_omits: Iterable[str]) -> bool:
  """True when a non-category attribute the query names matches the item but is not in its title."""
  omitted = set(title_omits)
  return any(k != 'category' and k in omitted and item_attrs.get(k) == v
             for k, v in query_attrs.items())
