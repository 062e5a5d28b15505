"""The bring-your-own-data (BYOD) format: reading and validating a dataset directory.

A dataset directory holds (field by field in docs/DATA.md):
  items.jsonl         required; one catalog item per line, catalog order = item index
  interactions.jsonl  required; one (query, item) impression or judgement per line
  queries.jsonl       optional; attributes of query strings (ground truth for evaluation)
  images/...          optional; PNG/JPEG pictures named by items' `image` field

An absent optional field means that modality or label is absent, never an error. Everything else
is checked: malformed JSON, missing required fields, wrong types, unknown fields (a typo must not
be silently ignored), duplicate ids, unknown item ids and unreadable images raise `DataError`,
whose message names the file, the line and the field: "<file>:<line>: field '<f>': <what>".
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson
from PIL import Image

from mmret.data import interaction_log
from mmret.data.interaction_log import SPLITS, Interaction, InteractionColumns, InteractionLog

ITEMS_FILE = 'items.jsonl'
INTERACTIONS_FILE = 'interactions.jsonl'
QUERIES_FILE = 'queries.jsonl'
# A judged pair with a grade below this is irrelevant: never a positive (RelevanceScale).
DEFAULT_RELEVANT_THRESHOLD = 1.0


class DataError(ValueError):
  """Invalid BYOD input; the message is "<file>:<line>: field '<field>': <what>" (line 0: the
  file as a whole, "<file>: ...")."""

  def __init__(self, path: pathlib.Path | str, line: int, field: str | None, what: str):
    where = (f"{path}:{line}: " if line else f"{path}: ") + (f"field '{field}': " if field else '')
    super().__init__(where + what)
    self.path, self.line, self.field = str(path), line, field


@dataclasses.dataclass(frozen=True)
class RelevanceScale:
  """How `relevance` values read: numbers as they are, strings through `labels`.

  labels: label -> grade, e.g. {'Exact': 3, 'Substitute': 2, 'Complement': 1, 'Irrelevant': 0}
    (config data.relevance.labels); empty = only numeric grades are accepted.
  threshold: a grade >= threshold is relevant; below it the pair is judged irrelevant and is
    never a positive (config data.relevance.threshold).
  """
  labels: tuple[tuple[str, float], ...] = ()
  threshold: float = DEFAULT_RELEVANT_THRESHOLD

  def grade(self, value, where, field) -> float:
    """A JSON value -> its grade >= 0, or DataError naming file, line and field."""
    if isinstance(value, str):
      labels = dict(self.labels)
      if value not in labels:
        known = f'known labels: {", ".join(labels)}' if labels else 'no labels are configured'
        raise DataError(*where, field, f'unknown relevance label {json.dumps(value)} ({known}; '
                        'map labels to grades with config key data.relevance.labels)')
      return labels[value]
    # bool is an int in Python, and JSON NaN / Infinity parse as floats: none of them is a grade.
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not math.isfinite(value) or value < 0):
      raise DataError(*where, field, 'expected a finite grade >= 0 or a configured label, got '
                      f'{json.dumps(value)}')
    return float(value)


@dataclasses.dataclass(slots=True)
class Item:
  """One catalog item. Absent modalities: description '', category/image None, context {}.
  Slotted, repeated strings shared (field checkers): `large`'s 2M items take ~1 KB each, not 2."""
  item_id: str
  title: str
  description: str = ''
  category: str | None = None
  image: str | None = None            # absolute path to a PNG/JPEG
  context: dict[str, float | None] = dataclasses.field(default_factory=dict)
  attributes: dict[str, str] = dataclasses.field(default_factory=dict)
  title_omits: tuple[str, ...] = ()   # attribute names shown in the image but not in the title


@dataclasses.dataclass
class QueryInfo:
  """A line of queries.jsonl: ground-truth attributes of a query string."""
  query: str
  attributes: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Dataset:
  """A validated BYOD directory held in memory."""
  root: pathlib.Path
  items: list[Item]                   # catalog order = item index used everywhere
  interactions: Sequence[Interaction]  # an InteractionLog when loaded, or a list
  queries: dict[str, QueryInfo]       # may be empty
  context_names: tuple[str, ...]      # sorted union of the items' context keys
  # How grades read and from which grade a judged pair is relevant: one scale per dataset.
  relevance: RelevanceScale = RelevanceScale()

  def positive(self, x: Interaction) -> bool:
    """Interaction.positive at this dataset's relevant threshold."""
    return x.positive(self.relevance.threshold)

  def judged_irrelevant(self, x: Interaction) -> bool:
    """Interaction.judged_irrelevant at this dataset's relevant threshold."""
    return x.judged_irrelevant(self.relevance.threshold)

  def item_index(self) -> dict[str, int]:
    """item_id -> catalog index."""
    return {item.item_id: i for i, item in enumerate(self.items)}

  def page_keys(self) -> list[tuple]:
    """interaction_log.page_keys of this log: per interaction, its result page."""
    return interaction_log.page_keys(self.interactions)

  def columns(self) -> InteractionColumns:
    """The log as arrays (InteractionColumns), built once and kept: call again after
    replacing or resizing `interactions` and it is rebuilt (in-place edits of single
    interactions are not seen)."""
    key = (id(self.interactions), len(self.interactions), self.relevance)
    cached = self.__dict__.get('_columns')
    if cached is None or cached[0] != key:
      cols = interaction_log.columns(self.interactions, self.item_index(),
                                     self.relevance.threshold)
      self.__dict__['_columns'] = cached = (key, cols)
    return cached[1]

  def splits(self) -> list[str]:
    """Per interaction 'train' or 'eval' (interaction_log.splits: ARCHITECTURE.md split rule)."""
    if isinstance(self.interactions, InteractionLog):
      return np.where(self.columns().is_eval, 'eval', 'train').tolist()
    return interaction_log.splits(self.interactions)


# --- field checkers: each returns the converted value or raises DataError ----------------------
# Strings that repeat across records (categories, attribute and context names and values) are
# interned: json.loads makes new objects for every line, so 2M items would each hold their own
# 'color', 'black', 'shoes', ...; interned, each distinct string is held once.

def _str(value, where, field):
  if not isinstance(value, str):
    raise DataError(*where, field, f'expected a string, got {json.dumps(value)}')
  return value


def _shared_str(value, where, field):
  return sys.intern(_str(value, where, field))


def _nonempty_str(value, where, field):
  if not _str(value, where, field).strip():
    raise DataError(*where, field, 'must not be empty')
  return value


def _int(value, where, field):
  # bool is a subclass of int in Python, but `true` is not a day or a position.
  if isinstance(value, bool) or not isinstance(value, int):
    raise DataError(*where, field, f'expected an integer, got {json.dumps(value)}')
  if not -2**63 <= value < 2**63:  # the log holds them as int64
    raise DataError(*where, field, f'{value} is out of the 64-bit integer range')
  return value


def _nonneg_int(value, where, field):
  if _int(value, where, field) < 0:
    raise DataError(*where, field, f'must be >= 0, got {value}')
  return value


def _flag(value, where, field):
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  raise DataError(*where, field, f'expected true/false or 0/1, got {json.dumps(value)}')


def _split(value, where, field):
  if value not in SPLITS:
    raise DataError(*where, field, f"expected 'train' or 'eval', got {json.dumps(value)}")
  return value


def _str_dict(value, where, field):
  if not isinstance(value, dict):
    raise DataError(*where, field, f'expected an object, got {json.dumps(value)}')
  return {sys.intern(key): _shared_str(v, where, f'{field}.{key}') for key, v in value.items()}


def _context(value, where, field):
  if not isinstance(value, dict):
    raise DataError(*where, field, f'expected an object, got {json.dumps(value)}')
  out = {}
  for key, v in value.items():
    key = sys.intern(key)
    if v is None:
      out[key] = None
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise DataError(*where, f'{field}.{key}',
                      f'expected a finite number or null, got {json.dumps(v)}')
    else:
      out[key] = float(v)
  return out


def _str_tuple(value, where, field):
  if not isinstance(value, list):
    raise DataError(*where, field, f'expected a list of strings, got {json.dumps(value)}')
  return tuple(_shared_str(v, where, field) for v in value)


Checker = Callable[[Any, tuple, str], Any]

# Per file: field -> (required, checker). Null in an optional field means "absent".
_ITEM_FIELDS: dict[str, tuple[bool, Checker]] = {
    'item_id': (True, _nonempty_str), 'title': (True, _str), 'description': (False, _str),
    'category': (False, _shared_str), 'image': (False, _nonempty_str), 'context': (False, _context),
    'attributes': (False, _str_dict), 'title_omits': (False, _str_tuple),
}
_INTERACTION_FIELDS: dict[str, tuple[bool, Checker]] = {
    'query': (True, _nonempty_str), 'item_id': (True, _nonempty_str), 'page_id': (False, _str),
    'position': (False, _nonneg_int), 'click': (False, _flag), 'purchase': (False, _flag),
    'engaged': (False, _flag), 'relevance': (False, RelevanceScale().grade), 'day': (False, _int),
    'split': (False, _split),
}
_QUERY_FIELDS: dict[str, tuple[bool, Checker]] = {
    'query': (True, _nonempty_str), 'attributes': (False, _str_dict),
}


def _read_jsonl(path: pathlib.Path, fields: dict[str, tuple[bool, Checker]]
                ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, checked fields without absent ones) for each non-blank line."""
  with open(path, 'rb') as f:
    for line_no, raw in enumerate(f, start=1):
      where = (path, line_no)
      try:
        record = orjson.loads(raw)  # several times faster than `json` on 14M lines
      except orjson.JSONDecodeError:
        # Not strict RFC 8259 JSON, or no JSON at all: the `json` module decides, as it always
        # did (NaN parses and is then rejected by the field's checker, naming the field).
        record = _parse_line(raw, path, line_no)
        if record is None:  # blank line
          continue
      if not isinstance(record, dict):
        raise DataError(path, line_no, None, 'expected a JSON object per line')
      out = {}
      for name, value in record.items():
        if name not in fields:
          raise DataError(path, line_no, name,
                          f'unknown field (known: {", ".join(sorted(fields))})')
        if value is not None:
          out[name] = fields[name][1](value, where, name)
      for name, (required, _) in fields.items():
        if required and name not in out:
          raise DataError(path, line_no, name, 'missing required field')
      yield line_no, out


def _parse_line(raw: bytes, path: pathlib.Path, line_no: int) -> Any:
  """One line through the `json` module: its value, None for a blank line, or DataError."""
  try:
    line = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(path, line_no, None, f'not UTF-8 (byte 0x{raw[e.start]:02x} at column '
                    f'{e.start + 1}); save the file as UTF-8') from None
  if not line.strip():
    return None
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(path, line_no, None, f'malformed JSON: {e.msg} (column {e.colno})') from e


def _check_image(path: pathlib.Path, where: tuple, field: str) -> None:
  """Pillow `verify()` reads the whole file and checks its structure without decoding."""
  if not path.is_file():
    raise DataError(*where, field, f'image file {path} does not exist')
  try:
    with Image.open(path) as img:
      fmt = img.format
      img.verify()
  except Exception as e:  # pillow raises many types for corrupt files
    raise DataError(*where, field, f'unreadable image {path}: {e}') from e
  if fmt not in ('PNG', 'JPEG'):
    raise DataError(*where, field, f'image {path} is {fmt}, expected PNG or JPEG')


def _load_items(root: pathlib.Path, check_images: bool) -> list[Item]:
  """Items of `root` (an absolute, resolved directory) in file order."""
  path = root / ITEMS_FILE
  items, seen = [], {}
  for line_no, rec in _read_jsonl(path, _ITEM_FIELDS):
    if rec['item_id'] in seen:
      raise DataError(path, line_no, 'item_id', f"duplicate item_id {rec['item_id']!r} "
                      f'(first on line {seen[rec["item_id"]]})')
    seen[rec['item_id']] = line_no
    if 'image' in rec:
      # Absolute and normalised under the resolved root; not Path.resolve() per item, which
      # lstat()s every path component (half of the items' load time at 2M items).
      image = os.path.normpath(os.path.join(root, rec['image']))
      if check_images:
        _check_image(pathlib.Path(image), (path, line_no), 'image')
      rec['image'] = image
    items.append(Item(**rec))
  if not items:
    raise DataError(path, 0, None, 'the catalog is empty')
  if not any(item.title.strip() for item in items):
    raise DataError(path, 0, 'title', 'every title is empty, so the item tower has no text to '
                    'read; give items their titles (docs/DATA.md)')
  return items


def load_dataset(root: str | pathlib.Path, *, check_images: bool = True,
                 relevance: RelevanceScale | None = None) -> Dataset:
  """Reads and validates a BYOD directory.

  Args:
    root: directory with items.jsonl, interactions.jsonl and optionally queries.jsonl.
    check_images: open every image with pillow `verify()` (slow for huge catalogs; `prepare`
      decodes every image anyway).
    relevance: how `relevance` grades and labels read, and from which grade a pair is relevant
      (default: numbers only, threshold DEFAULT_RELEVANT_THRESHOLD).
  Returns:
    The Dataset, items in file order.
  Raises:
    DataError naming file, line and field (a missing required file too).
  """
  root = pathlib.Path(root).expanduser().resolve()
  for name in (ITEMS_FILE, INTERACTIONS_FILE):
    if not (root / name).is_file():
      raise DataError(root / name, 0, None, f'not found: a BYOD directory needs {ITEMS_FILE} '
                      f'and {INTERACTIONS_FILE} (docs/DATA.md)')
  items = _load_items(root, check_images)

  path = root / INTERACTIONS_FILE
  scale = relevance or RelevanceScale()
  fields = {**_INTERACTION_FIELDS, 'relevance': (False, scale.grade)}
  log = interaction_log.LogBuilder([item.item_id for item in items])
  for line_no, rec in _read_jsonl(path, fields):
    if rec['item_id'] not in log.item_index:
      raise DataError(path, line_no, 'item_id',
                      f"unknown item_id {rec['item_id']!r} (not in {ITEMS_FILE})")
    log.add(rec)
  interactions = log.build()

  queries: dict[str, QueryInfo] = {}
  path = root / QUERIES_FILE
  if path.is_file():
    for line_no, rec in _read_jsonl(path, _QUERY_FIELDS):
      if rec['query'] in queries:
        raise DataError(path, line_no, 'query', f"duplicate query {rec['query']!r}")
      queries[rec['query']] = QueryInfo(**rec)

  context_names = tuple(sorted({k for item in items for k in item.context}))
  return Dataset(root=root, items=items, interactions=interactions, queries=queries,
                 context_names=context_names, relevance=scale)
