"""Grain transforms: TFDS rows -> joined examples -> fixed-shape numpy batches.

Everything here is a module-level class holding only picklable state (paths, a Tokenizer, ints),
so a pipeline can run in Grain worker processes. Rows come from `tfds_builder` splits; text is
read back as UTF-8 bytes and decoded here. A `Batcher` is a Grain `batch_fn`: they receive the list
of examples of one batch, tokenise all texts at once (`encode_batch` is far faster than one call
per row) and, when asked to, pad a short last batch to the full size with a `valid` mask.
"""

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmret.data import tokenizer as tokenizer_lib

Row = Mapping[str, Any]

_ITEM_FIELDS = ('title', 'image', 'has_image', 'context', 'context_present')


def to_str(value: bytes | str) -> str:
  """TFDS Text features come back as UTF-8 bytes."""
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# What an item batch reads of an `items` row (item_features). Every split's rows carry every
# feature of the dataset (one FeaturesDict), so a catalog row decoded whole is 26 features;
# decoding these 6 is ~1.7x faster a row, ~4.6x with batched reads (docs/PERFORMANCE.md).
ITEM_ROW_FIELDS = ('item_index', *_ITEM_FIELDS)
# What a training pair reads of its `train` row: the item's fields come from `items`.
PAIR_ROW_FIELDS = ('query', 'query_index', 'item_index')


class RowSource:
  """Random access to one split, opened lazily by path (so it pickles to workers), decoding
  only `fields` with TFDS's own decoder; `rows(indices)` reads the records of a batch in one
  array_record call."""

  def __init__(self, builder_dir: str, split: str, fields: Sequence[str]):
    self.builder_dir, self.split, self.fields = builder_dir, split, tuple(fields)
    self._raw = None
    self._features = None
    self._lock = threading.Lock()

  def _open(self):
    if self._raw is None:
      with self._lock:
        if self._raw is None:
          builder = tfds.builder_from_directory(self.builder_dir)
          self._features = tfds.features.FeaturesDict(
              {k: builder.info.features[k] for k in self.fields})
          self._raw = builder.as_data_source(
              split=self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return self._raw

  def __len__(self) -> int:
    return len(self._open())

  def __getitem__(self, index: int) -> Row:
    record = self._open()[index]
    return self._features.deserialize_example_np(record)

  def rows(self, indices: Sequence[int]) -> list[Row]:
    records = self._open().__getitems__([int(i) for i in indices])
    return [self._features.deserialize_example_np(r) for r in records]

  def __getstate__(self):
    return {'builder_dir': self.builder_dir, 'split': self.split, 'fields': self.fields}

  def __setstate__(self, state):
    RowSource.__init__(self, state['builder_dir'], state['split'], state['fields'])


class ItemSource(RowSource):
  """The `items` split, ITEM_ROW_FIELDS decoded (item_features' input)."""

  def __init__(self, builder_dir: str):
    super().__init__(builder_dir, 'items', ITEM_ROW_FIELDS)


def pad_rows(rows: Sequence[Row], batch_size: int) -> tuple[list[Row], np.ndarray]:
  """Pads rows to batch_size by repeating the last row; valid bool [batch_size] marks real rows.

  Copies of a real row (not zeros) keep every padded row well-formed, e.g. a non-empty token
  mask, so nothing downstream divides by zero on rows that are then masked out.
  """
  rows = list(rows)
  if not rows or len(rows) > batch_size:
    raise ValueError(f'cannot pad {len(rows)} rows to a batch of {batch_size}.')
  valid = np.arange(batch_size) < len(rows)
  return rows + [rows[-1]] * (batch_size - len(rows)), valid


def query_features(queries: Sequence[str], tokenizer: tokenizer_lib.Tokenizer, query_len: int
                   ) -> dict[str, np.ndarray]:
  """query_tokens int32 [B, Lq], query_mask bool [B, Lq]."""
  tokens, mask = tokenizer.encode(queries, query_len)
  return {'query_tokens': tokens, 'query_mask': mask}


def trigram_features(queries: Sequence[str], num_buckets: int, max_trigrams: int
                     ) -> dict[str, np.ndarray]:
  """trigram_ids int32 [B, T], trigram_mask bool [B, T]."""
  ids, mask = tokenizer_lib.char_trigram_ids(queries, num_buckets, max_trigrams)
  return {'trigram_ids': ids, 'trigram_mask': mask}


def item_features(rows: Sequence[Row], tokenizer: tokenizer_lib.Tokenizer, title_len: int
                  ) -> dict[str, np.ndarray]:
  """Item-side batch fields of rows carrying _ITEM_FIELDS and item_index.

  Returns title_tokens int32 [B, Lt], title_mask bool [B, Lt], image uint8 [B, S, S, 3],
  image_present bool [B], text_present bool [B] (False for an empty title), item_index int32 [B],
  context float32 [B, C], context_present bool [B, C].
  """
  titles = [to_str(r['title']) for r in rows]
  tokens, mask = tokenizer.encode(titles, title_len)
  return {
      'title_tokens': tokens, 'title_mask': mask,
      'image': np.stack([r['image'] for r in rows]).astype(np.uint8),
      'image_present': np.array([r['has_image'] for r in rows], bool),
      'text_present': np.array([bool(t.strip()) for t in titles], bool),
      'item_index': np.array([r['item_index'] for r in rows], np.int32),
      'context': np.stack([r['context'] for r in rows]).astype(np.float32),
      'context_present': np.stack([r['context_present'] for r in rows]).astype(bool),
  }


class Batcher:
  """Grain batch_fn: rows -> fields(rows); pad=True fills a short batch and adds `valid` [B]."""

  def __init__(self, fields, batch_size: int, pad: bool):
    self.fields, self.batch_size, self.pad = fields, batch_size, pad

  def __call__(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    valid = None
    if self.pad:
      rows, valid = pad_rows(rows, self.batch_size)
    batch = self.fields(rows)
    if valid is not None:
      batch['valid'] = valid
    return batch


class PairFields:
  """Pre-training pair batch (ARCHITECTURE.md): query + item fields + query_index."""

  def __init__(self, tokenizer, query_len: int, title_len: int):
    self.tokenizer, self.query_len, self.title_len = tokenizer, query_len, title_len

  def __call__(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    batch = query_features([to_str(r['query']) for r in rows], self.tokenizer, self.query_len)
    batch.update(item_features(rows, self.tokenizer, self.title_len))
    batch['query_index'] = np.array([r['query_index'] for r in rows], np.int32)
    return batch


class PairRows:
  """Batch fields of row numbers of an interaction split: each batch's pair rows read in one
  call (PAIR_ROW_FIELDS decoded), joined with their items' rows (read in one call), then
  `fields` (PairFields). The rows arrive as ints, so a pipeline shuffles and filters row
  numbers and decodes only the rows it batches."""

  def __init__(self, builder_dir: str, split: str, fields):
    self.pairs = RowSource(builder_dir, split, PAIR_ROW_FIELDS)
    self.items = ItemSource(builder_dir)
    self.fields = fields

  def __call__(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
    pairs = self.pairs.rows(rows)
    items = self.items.rows([r['item_index'] for r in pairs])
    return self.fields([{**item, **pair} for pair, item in zip(pairs, items)])


class PageFields:
  """Recall page batch: query_index [B], positives int32 [B, 3], positive_mask bool [B, 3]."""

  def __call__(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    return {
        'query_index': np.array([r['query_index'] for r in rows], np.int32),
        'positives': np.stack([r['positives'] for r in rows]).astype(np.int32),
        'positive_mask': np.stack([r['positive_mask'] for r in rows]).astype(bool),
        'page_index': np.array([r['page_index'] for r in rows], np.int32),
    }


class ItemFields:
  """Catalog batch for item vectors: item_features of `items` rows."""

  def __init__(self, tokenizer, title_len: int):
    self.tokenizer, self.title_len = tokenizer, title_len

  def __call__(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    return item_features(rows, self.tokenizer, self.title_len)


class QueryFields:
  """Batch of raw query strings: query tokens, plus trigrams when num_buckets > 0."""

  def __init__(self, tokenizer, max_len: int, num_buckets: int = 0, max_trigrams: int = 0):
    self.tokenizer, self.max_len = tokenizer, max_len
    self.num_buckets, self.max_trigrams = num_buckets, max_trigrams

  def __call__(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    batch = query_features(list(rows), self.tokenizer, self.max_len)
    if self.num_buckets:
      batch.update(trigram_features(list(rows), self.num_buckets, self.max_trigrams))
    return batch
