"""The interaction log: one impression or judged pair per row, as objects or as columns.

`Interaction` is one row; the rules every consumer shares are here: which split a row is on
(`splits`), which result page it was shown on (`page_keys`), and whether it is a positive
(`Interaction.positive`). `InteractionLog` is how records.load_dataset holds a loaded
interactions.jsonl: compact columns (53 bytes a row; SynthShop `large` has 14M rows), a
sequence of Interactions built on access. `columns` gives any log, list or InteractionLog, as
the arrays that whole-log passes read (InteractionColumns), vectorised for an InteractionLog.
"""

import array
from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import numpy as np

SPLITS = ('train', 'eval')


@dataclasses.dataclass(slots=True)
class Interaction:
  """One logged impression (or a judged pair). None = the field was not given.

  Slotted; a loaded log holds no Interactions but columns (InteractionLog), and builds them
  on access with shared strings for repeated queries, item ids and page ids.
  """
  query: str
  item_id: str
  page_id: str | None = None
  position: int | None = None
  click: bool | None = None
  purchase: bool | None = None
  engaged: bool | None = None
  relevance: float | None = None      # judged grade >= 0 (a label already mapped to its number)
  day: int | None = None
  split: str | None = None            # 'train' | 'eval'

  def judged_irrelevant(self, threshold: float) -> bool:
    """A relevance grade was given and it is below `threshold` (the dataset's
    RelevanceScale.threshold: use Dataset.judged_irrelevant)."""
    return self.relevance is not None and self.relevance < threshold

  def positive(self, threshold: float) -> bool:
    """Never when judged irrelevant at `threshold`; else clicked or bought; without those
    labels, engaged; with no label but a relevant grade, or with no label at all, True
    (Dataset.positive gives the dataset's threshold).

    Grades decide first: a click on an item judged irrelevant is noise, not a target. A log of
    bare (query, item) pairs is a list of positives, so an interaction without labels counts.
    """
    if self.judged_irrelevant(threshold):
      return False
    if self.click is not None or self.purchase is not None:
      return bool(self.click) or bool(self.purchase)
    if self.engaged is not None:
      return self.engaged
    return True


def engagement_label(x: Interaction) -> int | None:
  """1 / 0: engaged if logged, else clicked or bought if either is; None: no such label
  (the engage job's label of an impression)."""
  if x.engaged is not None:
    return int(x.engaged)
  if x.click is not None or x.purchase is not None:
    return int(bool(x.click) or bool(x.purchase))
  return None


def splits(interactions: Sequence[Interaction]) -> list[str]:
  """Per interaction 'train' or 'eval' (ARCHITECTURE.md split rule): `split` if given; else the
  interactions of the last day (max over all days) are eval; one with neither field is train."""
  days = [x.day for x in interactions if x.day is not None]
  last = max(days) if days else None
  return [x.split if x.split is not None else
          ('eval' if x.day is not None and x.day == last else 'train') for x in interactions]


def page_keys(interactions: Sequence[Interaction]) -> list[tuple]:
  """Per interaction, the result page it was shown on: page_id, else (query, day); one tuple
  per page, shared by its rows (14M rows on 700k pages would otherwise hold ~1 GB of them)."""
  shared: dict[tuple, tuple] = {}
  return [shared.setdefault(key, key) for key in
          (('id', x.page_id) if x.page_id is not None else ('qd', x.query, x.day)
           for x in interactions)]


@dataclasses.dataclass(frozen=True)
class InteractionColumns:
  """The interaction log as arrays (records.Dataset.columns): M rows, Q distinct query strings.

  Evaluation sets, the validation split and the judged negatives read the log through these
  vectorised arrays instead of looping over M objects per use (SynthShop `large`: 14M).
  queries:   [Q] distinct query strings, in order of first appearance in the log.
  query:     int64 [M] index into `queries`.
  item:      int64 [M] catalog index of the item.
  page:      int64 [M] index of the result page (Dataset.page_keys: page_id, else (query, day)).
  is_eval:   bool [M] on the eval split (Dataset.splits).
  positive:  bool [M] Dataset.positive.
  judged_irrelevant: bool [M] Dataset.judged_irrelevant (graded below the threshold).
  relevance: float64 [M] the judged grade; NaN where none was given.
  position:  int64 [M] the rank on its page; -1 where none was given.
  engagement: int8 [M] the engagement label (engage job): `engaged` if given, else clicked or
             bought if either is given; -1 where the row carries none of these labels.
  """
  queries: list[str]
  query: np.ndarray
  item: np.ndarray
  page: np.ndarray
  is_eval: np.ndarray
  positive: np.ndarray
  judged_irrelevant: np.ndarray
  relevance: np.ndarray
  position: np.ndarray
  engagement: np.ndarray

  def split_rows(self, split: str) -> np.ndarray:
    """int64: the interactions of `split` ('train' or 'eval') in log order, which is the
    order of the rows of that split in the prepared dataset (tfds_builder)."""
    if split not in ('train', 'eval'):
      raise ValueError(f"split {split!r}: the interaction splits are 'train' and 'eval'.")
    return np.flatnonzero(self.is_eval if split == 'eval' else ~self.is_eval)

  def rows(self, position: dict[str, int]) -> np.ndarray:
    """int64 [M]: each interaction's query looked up in `position` (query -> row), -1 where
    the query is not in it."""
    return np.array([position.get(q, -1) for q in self.queries], np.int64)[self.query]


_NONE = -1  # an absent int field / flag / split in InteractionLog
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


class InteractionLog(Sequence):
  """The loaded interactions.jsonl held as columns, a sequence of Interactions built on access.

  14M `Interaction` objects took ~5 GiB and a third of SynthShop `large`'s load; these columns
  take ~50 bytes a row. Code that needs the whole log reads Dataset.columns (built from these
  arrays without any object); `log[i]` and iteration make Interactions one at a time, with the
  same string objects for repeated queries, item ids and page ids. Equal to a list of the same
  Interactions (==, slicing gives a list).
  """

  def __init__(self, queries: list[str], item_ids: list[str], pages: list[str],
               columns: dict[str, np.ndarray]):
    """queries / item_ids / pages: the strings the codes index; columns: int64 'query',
    'item', 'page' (-1 none), 'position' (-1 none), 'day', bool 'has_day', int8 'click',
    'purchase', 'engaged' (-1 none, 0, 1) and 'split' (-1 none, else index in SPLITS),
    float64 'relevance' (NaN none); each [M]."""
    self.queries, self.item_ids, self.pages = queries, item_ids, pages
    self.arrays = columns
    self._len = int(columns['query'].shape[0])

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._len))]
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f'interaction {index} of {self._len}')
    a = self.arrays
    flag = lambda name: None if a[name][index] == _NONE else bool(a[name][index])
    page, position, split = int(a['page'][index]), int(a['position'][index]), a['split'][index]
    relevance = float(a['relevance'][index])
    return Interaction(
        query=self.queries[a['query'][index]], item_id=self.item_ids[a['item'][index]],
        page_id=None if page == _NONE else self.pages[page],
        position=None if position == _NONE else position, click=flag('click'),
        purchase=flag('purchase'), engaged=flag('engaged'),
        relevance=None if math.isnan(relevance) else relevance,
        day=int(a['day'][index]) if a['has_day'][index] else None,
        split=None if split == _NONE else SPLITS[split])

  def __eq__(self, other) -> bool:
    if not isinstance(other, Sequence) or len(other) != len(self):
      return False
    return all(x == y for x, y in zip(self, other))

  __hash__ = None  # mutable-sequence semantics: equal to a list, so not hashable

  def __repr__(self) -> str:
    return f'InteractionLog({self._len:,} interactions, {len(self.queries):,} queries)'


def log_columns(log: InteractionLog, threshold: float) -> InteractionColumns:
  """Dataset.columns of a loaded log, vectorised: the same rules as Dataset.splits,
  Interaction.positive / judged_irrelevant and Dataset.page_keys."""
  a = log.arrays
  split, day, has_day = a['split'], a['day'], a['has_day']
  is_eval = split == _SPLIT_CODES['eval']
  if has_day.any():  # no split given: the last day is eval
    is_eval |= (split == _NONE) & has_day & (day == day[has_day].max())
  rel = a['relevance']
  judged_irrelevant = rel < threshold  # NaN (not judged) compares False
  click, purchase, engaged = a['click'], a['purchase'], a['engaged']
  labelled = (click != _NONE) | (purchase != _NONE)
  positive = np.where(labelled, (click == 1) | (purchase == 1),
                      np.where(engaged != _NONE, engaged == 1, True)) & ~judged_irrelevant
  # Pages: page_id, else (query, day) with an absent day its own value; numbered by first
  # appearance, as page_keys.
  days, day_code = np.unique(day[has_day], return_inverse=True)
  codes = np.zeros(len(log), np.int64)
  codes[has_day] = day_code.reshape(-1) + 1
  key = np.where(a['page'] >= 0, a['page'],
                 len(log.pages) + a['query'] * (days.size + 1) + codes)
  _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
  rank = np.empty(first.size, np.int64)
  rank[np.argsort(first, kind='stable')] = np.arange(first.size)
  engagement = np.where(engaged != _NONE, engaged,
                        np.where(labelled, (click == 1) | (purchase == 1), _NONE))
  return InteractionColumns(
      queries=list(log.queries), query=a['query'], item=a['item'],
      page=rank[inverse.reshape(-1)], is_eval=is_eval, positive=positive,
      judged_irrelevant=judged_irrelevant, relevance=rel, position=a['position'],
      engagement=engagement.astype(np.int8))



class LogBuilder:
  """Appends checked interactions.jsonl records to compact columns (load_dataset)."""

  def __init__(self, item_ids: list[str]):
    self.item_ids = item_ids
    self.item_index = {item_id: i for i, item_id in enumerate(item_ids)}
    self.query_code: dict[str, int] = {}
    self.page_code: dict[str, int] = {}
    self.ints = {name: array.array('q') for name in ('query', 'item', 'page', 'position', 'day')}
    self.bytes = {name: array.array('b') for name in ('click', 'purchase', 'engaged', 'split',
                                                      'has_day')}
    self.relevance = array.array('d')

  def add(self, rec: dict[str, Any]) -> None:
    ints, small = self.ints, self.bytes
    query = rec['query']
    code = self.query_code.get(query)
    if code is None:
      code = self.query_code[query] = len(self.query_code)
    ints['query'].append(code)
    ints['item'].append(self.item_index[rec['item_id']])
    page = rec.get('page_id')
    if page is None:
      ints['page'].append(_NONE)
    else:
      code = self.page_code.get(page)
      if code is None:
        code = self.page_code[page] = len(self.page_code)
      ints['page'].append(code)
    ints['position'].append(rec.get('position', _NONE))
    day = rec.get('day')
    ints['day'].append(0 if day is None else day)
    small['has_day'].append(day is not None)
    for name in ('click', 'purchase', 'engaged'):
      value = rec.get(name)
      small[name].append(_NONE if value is None else value)
    split = rec.get('split')
    small['split'].append(_NONE if split is None else _SPLIT_CODES[split])
    self.relevance.append(rec.get('relevance', math.nan))

  def build(self) -> InteractionLog:
    cols = {name: np.frombuffer(a, np.int64) if a else np.zeros(0, np.int64)
            for name, a in self.ints.items()}
    cols.update({name: np.frombuffer(a, np.int8) if a else np.zeros(0, np.int8)
                 for name, a in self.bytes.items()})
    cols['has_day'] = cols['has_day'].astype(bool)
    cols['relevance'] = (np.frombuffer(self.relevance, np.float64) if self.relevance
                         else np.zeros(0, np.float64))
    return InteractionLog(list(self.query_code), self.item_ids, list(self.page_code), cols)


def columns(interactions: Sequence[Interaction], item_index: dict[str, int],
            threshold: float) -> InteractionColumns:
  """InteractionColumns of a log at this relevant threshold: vectorised for an InteractionLog,
  one pass over the objects (the reference rules above) for any other sequence."""
  if isinstance(interactions, InteractionLog):
    return log_columns(interactions, threshold)
  xs, m = interactions, len(interactions)
  query_pos: dict[str, int] = {}
  page_pos: dict[tuple, int] = {}
  nan = float('nan')
  cols = InteractionColumns(
      query=np.fromiter((query_pos.setdefault(x.query, len(query_pos)) for x in xs),
                        np.int64, m),
      queries=[],
      item=np.fromiter((item_index[x.item_id] for x in xs), np.int64, m),
      page=np.fromiter((page_pos.setdefault(k, len(page_pos)) for k in page_keys(xs)),
                       np.int64, m),
      is_eval=np.array([s == 'eval' for s in splits(xs)], bool).reshape(m),
      positive=np.fromiter((x.positive(threshold) for x in xs), bool, m),
      judged_irrelevant=np.fromiter((x.judged_irrelevant(threshold) for x in xs), bool, m),
      relevance=np.fromiter((nan if x.relevance is None else x.relevance for x in xs),
                            np.float64, m),
      position=np.fromiter((_NONE if x.position is None else x.position for x in xs),
                           np.int64, m),
      engagement=np.fromiter((_NONE if (y := engagement_label(x)) is None else y for x in xs),
                             np.int8, m))
  cols.queries.extend(query_pos)  # dict order = first appearance
  return cols
