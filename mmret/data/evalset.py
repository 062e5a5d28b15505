"""The evaluation set of a BYOD dataset: eval-day queries, their target items, and grades.

DESIGN.md §5: the eval data is the day after the training days (records.Dataset.splits). Per
distinct eval query, every item clicked or purchased that day, by any user on any page, is a
target (a pair judged irrelevant never is: records.Dataset.positive). Relevance grades come
from attributes where both the query and the item carry them (mmret.data.relevance: 2 exact, 1
same category, 0 irrelevant) and otherwise from the graded `relevance` labels logged in
interactions.jsonl; a pair with neither is -1 (unknown), so metrics can leave it out instead of
counting it as irrelevant.

Logged grades are any numbers >= 0 (records.RelevanceScale). `grade` puts them in the three
classes the relevance@K metrics read: 0 below the relevant threshold, 2 at the top grade logged
in the dataset (when it is above the threshold), 1 in between; so 0/1/2 grades with threshold 1
keep their meaning. `gain` keeps the numbers themselves, for nDCG.
"""

from collections.abc import Collection
import dataclasses

import numpy as np

from mmret.data import records
from mmret.data import relevance

UNKNOWN = -1  # grade of a pair with neither attributes nor a logged relevance label


@dataclasses.dataclass
class EvalSet:
  """Eval-day queries with their targets and a grader over (query, catalog item) pairs.

  queries: [Q] distinct eval-day queries with >= 1 target, in order of first appearance.
  query_attributes: [Q] ground-truth attributes per query ({} when queries.jsonl lacks it).
  query_counts: int64 [Q], how often each query was searched on the eval day: distinct pages
    (page_id; interactions without page_id form one page per (query, day)).
  targets: per query, sorted int64 item indices clicked or bought on the eval day.
  image_only_targets: per query, the targets matching a query attribute that the item's title
    omits (records.Item.title_omits), i.e. visible only in the image.
  image_only_relevant: per query, every catalog item that matches the query exactly (grade 2)
    through an attribute its title omits: the ground-truth set a text-only retriever can only
    find by chance (empty for queries without such attributes).
  grader: attribute grades (relevance.AttributeGrader) over (queries, catalog items).
  item_has_attributes: bool [N], the item carries any attribute.
  label_keys / label_values: int64 [P] sorted (query * N + item) keys and float32 [P] grades
    of the pairs judged in interactions.jsonl (max over repeated judgements).
  relevant_threshold: a logged grade >= this is relevant (records.RelevanceScale.threshold).
  top_grade: the highest grade logged anywhere in the dataset (0 when none is).
  """
  queries: list[str]
  query_attributes: list[dict[str, str]]
  query_counts: np.ndarray
  targets: list[np.ndarray]
  image_only_targets: list[np.ndarray]
  image_only_relevant: list[np.ndarray]
  grader: relevance.AttributeGrader
  item_has_attributes: np.ndarray
  label_keys: np.ndarray
  label_values: np.ndarray
  relevant_threshold: float = records.DEFAULT_RELEVANT_THRESHOLD
  top_grade: float = 0.0

  @property
  def num_items(self) -> int:
    return int(self.item_has_attributes.shape[0])

  def _labels(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """Logged grades (float32) for broadcast index arrays; UNKNOWN where never judged."""
    keys = query_idx.astype(np.int64) * self.num_items + item_idx.astype(np.int64)
    if not self.label_keys.size:
      return np.full(keys.shape, UNKNOWN, np.float32)
    pos = np.clip(np.searchsorted(self.label_keys, keys), 0, self.label_keys.size - 1)
    return np.where(self.label_keys[pos] == keys, self.label_values[pos],
                    UNKNOWN).astype(np.float32)

  def _label_classes(self, grades: np.ndarray) -> np.ndarray:
    """float logged grades -> int8 classes 2 / 1 / 0 (module docstring), UNKNOWN kept."""
    top = self.top_grade > self.relevant_threshold
    classes = np.where(grades >= self.relevant_threshold, 1, 0)
    classes = np.where(top & (grades >= self.top_grade), 2, classes)
    return np.where(grades == UNKNOWN, UNKNOWN, classes).astype(np.int8)

  def _usable_attributes(self, q: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    by_attributes = self.grader.grade(q, i)
    return by_attributes, (by_attributes != relevance.UNGRADED) & self.item_has_attributes[i]

  def gain(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """query_idx int [Q], item_idx int [Q, K] -> float32 [Q, K], the nDCG gain of each pair:
    the attribute grade, else the logged grade itself, else 0 (unknown counts as no gain)."""
    q = np.asarray(query_idx)[:, None]
    i = np.asarray(item_idx)
    by_attributes, usable = self._usable_attributes(q, i)
    return np.where(usable, by_attributes, np.maximum(self._labels(q, i), 0)).astype(np.float32)

  def ideal_gains(self, k: int) -> np.ndarray:
    """float32 [Q, min(k, N)]: each query's k largest gains over the whole catalog, the
    ranking an nDCG@k over retrieved lists is divided by; cached per k.

    Counted, not graded pair by pair (Q x N would be 20G pairs at 10k queries x 2M items): a
    query's attribute gains are 2 for each exact match and 1 for each partial one
    (AttributeGrader.match_counts), every other item with attributes 0; the pairs `gain` takes
    from logged labels (item without attributes, or a query that names none) are few and read
    from label_keys.
    """
    cache = self.__dict__.setdefault('_ideal_cache', {})
    if k in cache:
      return cache[k]
    n, nq = self.num_items, len(self.queries)
    k_eff = min(k, n)
    exact, partial = self.grader.match_counts()
    graded = (self.grader.query_codes >= 0).any(axis=1)
    q_l, i_l = np.divmod(self.label_keys, max(n, 1))
    from_label = ~(graded[q_l] & self.item_has_attributes[i_l])
    q_l = q_l[from_label]
    label_gains = np.maximum(self.label_values[from_label], 0).astype(np.float32)
    bounds = np.searchsorted(q_l, np.arange(nq + 1))  # label_keys are sorted by query
    out = np.zeros((nq, k_eff), np.float32)
    for q in range(nq):  # a query that names nothing has no exact or partial matches
      twos, ones = min(int(exact[q]), k_eff), min(int(partial[q]), k_eff)
      gains = np.concatenate([np.full(twos, 2, np.float32), np.full(ones, 1, np.float32),
                              label_gains[bounds[q]:bounds[q + 1]]])
      top = -np.sort(-gains)[:k_eff]
      out[q, :top.size] = top
    cache[k] = out
    return cache[k]

  def judged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every logged judgement of an eval query: query_idx int64 [P], item_idx int64 [P] and its
    gain float32 [P] (as `gain`), sorted by query."""
    q, i = np.divmod(self.label_keys, max(self.num_items, 1))
    return q, i, self.gain(q, i[:, None])[:, 0] if q.size else np.zeros(0, np.float32)

  def grade(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """query_idx int [Q], item_idx int [Q, K] -> int8 [Q, K]: 2 / 1 / 0, or -1 unknown.

    Attributes decide where the query names some and the item has any; otherwise the logged
    relevance label of the pair, if one exists.
    """
    q = np.asarray(query_idx)[:, None]
    i = np.asarray(item_idx)
    by_attributes, usable = self._usable_attributes(q, i)
    return np.where(usable, by_attributes,
                    self._label_classes(self._labels(q, i))).astype(np.int8)

  def category_relevant(self, query_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """query_idx int [Q], item_idx int [Q, K] -> bool [Q, K]: query category == item's."""
    return self.grader.category_relevant(np.asarray(query_idx)[:, None], np.asarray(item_idx))


def _judged_labels(cols: records.InteractionColumns, query_row: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Sorted pair keys (query row * n + item) and max grade of every logged relevance label of
  an eval query. query_row: int64 [Q_log], each log query's row in the eval set, -1 if none."""
  # Relevance is a property of the pair, not of the day: labels from every split count.
  rows = query_row[cols.query]
  keep = (rows >= 0) & ~np.isnan(cols.relevance)
  keys = rows[keep] * n + cols.item[keep]
  grades = cols.relevance[keep]
  order = np.lexsort((grades, keys))  # by key, then grade: each key's last row is its max
  keys, grades = keys[order], grades[order]
  last = np.ones(keys.size, bool)
  last[:-1] = keys[1:] != keys[:-1]
  return keys[last], grades[last].astype(np.float32)


def _image_only_relevant(dataset: records.Dataset, query_attrs: list[dict[str, str]],
                         grader: relevance.AttributeGrader) -> list[np.ndarray]:
  """Per query, the catalog items that match it exactly (grade 2) through an attribute their
  title omits (relevance.image_only_match), from the grader's exact matches: no pass over the
  catalog per query. Empty for queries that name no attribute besides the category."""
  cols = {name: c for c, name in enumerate(grader.names)}
  omitted = np.zeros((len(dataset.items), len(grader.names)), bool)  # [N, A]
  for row, item in enumerate(dataset.items):
    for name in item.title_omits:
      if name in cols:
        omitted[row, cols[name]] = True
  wanted = [q for q, attrs in enumerate(query_attrs) if any(k != 'category' for k in attrs)]
  exact = grader.exact_items(np.asarray(wanted, np.int64))
  out = [np.zeros(0, np.int64) for _ in query_attrs]
  for q in wanted:
    # An exact match equals every attribute the query names: image-only when the title omits
    # one of the named non-category attributes.
    named = [cols[k] for k in query_attrs[q] if k != 'category']
    items = exact.get(q, np.zeros(0, np.int64))
    out[q] = items[omitted[items][:, named].any(axis=1)].astype(np.int64)
  return out


def build_eval_set(dataset: records.Dataset, *, split: str = 'eval',
                   queries: Collection[str] | None = None) -> EvalSet:
  """Collects the eval-day targets per query (all users' clicks and purchases, DESIGN.md §5).

  An interaction is a target when it is on the eval split and positive
  (records.Dataset.positive: clicked or bought; engaged or unlabelled as fallbacks).
  split / queries: the same over another split, restricted to these queries (the validation
  set carved from the training queries, mmret.data.validation).
  """
  if split not in records.SPLITS:
    raise ValueError(f'split {split!r}: expected one of {records.SPLITS}.')
  cols = dataset.columns()
  n = len(dataset.items)
  on_split = cols.is_eval if split == 'eval' else ~cols.is_eval
  if queries is not None:
    on_split = on_split & (cols.rows(dict.fromkeys(queries, 0)) >= 0)
  q_rows = cols.query[on_split]
  has_target = np.zeros(len(cols.queries), bool)
  has_target[cols.query[on_split & cols.positive]] = True
  # Eval queries: those with a target, in order of first appearance on the split.
  seen, first = np.unique(q_rows, return_index=True)
  keep = has_target[seen]
  order = seen[keep][np.argsort(first[keep], kind='stable')]
  query_row = np.full(len(cols.queries), -1, np.int64)
  query_row[order] = np.arange(order.size)
  names = [cols.queries[c] for c in order.tolist()]
  nq = len(names)

  # Distinct pages per query (query_counts) and distinct positive items (targets).
  num_pages = int(cols.page.max()) + 1 if cols.page.size else 1
  pairs = np.unique(query_row[q_rows] * num_pages + cols.page[on_split])
  pairs = pairs[pairs >= 0]
  query_counts = np.bincount(pairs // num_pages, minlength=nq).astype(np.int64)
  hits = on_split & cols.positive
  pairs = np.unique(query_row[cols.query[hits]] * n + cols.item[hits])
  bounds = np.searchsorted(pairs // max(n, 1), np.arange(nq + 1))
  targets = [pairs[bounds[q]:bounds[q + 1]] % max(n, 1) for q in range(nq)]

  query_attrs = [dict(dataset.queries[q].attributes) if q in dataset.queries else {}
                 for q in names]
  image_only = []
  for attrs, t in zip(query_attrs, targets):
    image_only.append(np.array(
        [i for i in t.tolist() if relevance.image_only_match(
            attrs, dataset.items[i].attributes, dataset.items[i].title_omits)], np.int64))
  label_keys, label_values = _judged_labels(cols, query_row, n)
  grader = relevance.AttributeGrader(query_attrs, [it.attributes for it in dataset.items])
  return EvalSet(
      queries=names,
      query_attributes=query_attrs,
      query_counts=query_counts,
      targets=targets,
      image_only_targets=image_only,
      image_only_relevant=_image_only_relevant(dataset, query_attrs, grader),
      grader=grader,
      item_has_attributes=np.array([bool(it.attributes) for it in dataset.items], bool),
      label_keys=label_keys,
      label_values=label_values,
      relevant_threshold=dataset.relevance.threshold,
      top_grade=0.0 if np.isnan(cols.relevance).all() else float(np.nanmax(cols.relevance)))
