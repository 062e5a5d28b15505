"""Grain pipelines over a prepared TFDS dataset -> fixed-shape numpy batches (ARCHITECTURE.md).

  pretrain_pairs  one positive (query, item) pair per row, for stage-1 pre-training
  recall_pages    one clicked page per row (query_index, up to 3 positives), for stage 2
  item_batches    the whole catalog in order, for item vectors at evaluation time
  query_batches   a list of query strings, for query vectors at evaluation time

Every training pipeline has the same shape:
  source split -> shard (rows shard_index::shard_count, so processes see disjoint slices) ->
  shuffle(seed) -> repeat(num_epochs) -> batch;
pretrain_pairs shuffles row numbers instead, keeps the training pairs' rows and reads and
decodes, per batch, only those (and their items).
`num_epochs=None` repeats forever (each epoch reshuffled, deterministically) and batches have
exactly `batch_size` rows and no `valid` field. A finite `num_epochs` (evaluation) keeps the
short last batch, padded to `batch_size` by repeating its last row, with `valid` bool [B].
The result is a `grain.IterDataset`: `it = iter(ds)`; `it.get_state()` / `it.set_state(s)`
checkpoint the position (grain.checkpoint handlers do this through orbax).
"""

from collections.abc import Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmret.data import features
from mmret.data import tokenizer as tokenizer_lib

# Threads decoding rows in parallel. Decoding is mostly numpy/protobuf work that releases the
# GIL only in part, so a few threads suffice; the prefetch buffer smooths the join's latency.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)
_OPTIONS = grain.experimental.DatasetOptions(
    # Click logs are mostly non-clicks: filtering out >90% of impressions is expected here.
    filter_warn_threshold_ratio=None)


def _source(builder: tfds.core.DatasetBuilder, split: str):
  if split not in builder.info.splits:
    raise ValueError(f'the prepared dataset has no {split!r} split (it has '
                     f'{sorted(builder.info.splits)}): see docs/DATA.md for when a split is '
                     'empty.')
  return builder.as_data_source(split=split)


def _shard_rows(num_rows: int, shard_index: int, shard_count: int) -> range:
  """Rows shard_index::shard_count of num_rows; a clear error for a bad or empty shard."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} is not in [0, {shard_count}).')
  rows = range(shard_index, num_rows, shard_count)
  if not rows:
    raise ValueError(f'shard {shard_index} of {shard_count} is empty ({num_rows} rows).')
  return rows


def _pipeline(source, batcher: features.Batcher, *, seed: int, shard_index: int,
              shard_count: int, num_epochs: int | None, shuffle: bool = True,
              read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Assembles source -> shard -> shuffle -> repeat -> batch."""
  _shard_rows(len(source), shard_index, shard_count)
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  it = ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)
  it = grain.experimental.WithOptionsIterDataset(it, _OPTIONS)
  # Infinite streams never end, so drop_remainder only matters for finite ones, which pad.
  return it.batch(batcher.batch_size, drop_remainder=False, batch_fn=batcher)


def _check_training_positives(builder: tfds.core.DatasetBuilder, split: str) -> None:
  # A filter over an infinite stream without a single positive would spin forever.
  if split == 'train' and 'train_pages' not in builder.info.splits:
    raise ValueError('the train split has no positive interaction (no click, purchase or '
                     'engagement): nothing to pre-train on.')


def pretrain_pairs(builder: tfds.core.DatasetBuilder, tokenizer: tokenizer_lib.Tokenizer, *,
                   keep: np.ndarray, batch_size: int, seed: int, query_len: int,
                   title_len: int, shard_index: int = 0, shard_count: int = 1,
                   num_epochs: int | None = None, split: str = 'train') -> grain.IterDataset:
  """The training pairs of `split` (keep: bool [rows of the split], positives.training_rows)
  joined with their items' features.

  Row numbers are sharded (shard_index::shard_count), shuffled, repeated and filtered by
  `keep`; only the kept rows are read and decoded, a batch's pair rows in one call and their
  items in another (features.PairRows). The order is that of shuffling and filtering the rows
  themselves, so the batches are those of a source -> shuffle -> filter pipeline over the
  decoded split (tests/test_tfds_pipeline.py checks this).

  Batch: query_tokens/query_mask [B, Lq], title_tokens/title_mask [B, Lt], image uint8
  [B, S, S, 3], image_present, text_present bool [B], query_index (into the `queries` split;
  -1 for an eval query unseen in train), item_index int32 [B], context [B, C],
  context_present [B, C]; plus valid [B] when num_epochs is finite.
  """
  num_rows = len(_source(builder, split))
  keep = np.asarray(keep, bool)
  if keep.shape != (num_rows,):
    raise ValueError(f'pretrain_pairs: keep has shape {keep.shape}, the prepared {split!r} '
                     f'split has {num_rows} rows (is the TFDS cache from other records?).')
  rows = _shard_rows(num_rows, shard_index, shard_count)
  if not keep[rows.start::rows.step].any():
    # A filter over an infinite stream without a single kept row would spin forever.
    raise ValueError(f'the {split!r} split has no training pair (no click, purchase or '
                     'engagement outside the held-out queries) in shard '
                     f'{shard_index} of {shard_count}: nothing to pre-train on.')
  ds = grain.MapDataset.range(num_rows)[shard_index::shard_count].shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  # Row numbers are ints: filtering them costs nothing, so no prefetch threads.
  it = ds.filter(features.KeepRows(keep)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  it = grain.experimental.WithOptionsIterDataset(it, _OPTIONS)
  fields = features.PairRows(builder.data_dir, split,
                             features.PairFields(tokenizer, query_len, title_len))
  batcher = features.Batcher(fields, batch_size, pad=num_epochs is not None)
  return it.batch(batch_size, drop_remainder=False, batch_fn=batcher)


def recall_pages(builder: tfds.core.DatasetBuilder, *, batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Training pages: query_index [B], positives int32 [B, 3], positive_mask bool [B, 3].

  A training page is a train-split page (page_id, else (query, day)) with at least one
  positive; pages without one carry no recall signal and are not pages in this sense. Up to 3
  distinct positives are kept, best positions first. Also page_index int32 [B].
  """
  _check_training_positives(builder, 'train')
  batcher = features.Batcher(features.PageFields(), batch_size, pad=num_epochs is not None)
  return _pipeline(_source(builder, 'train_pages'), batcher, seed=seed,
                   shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs,
                   read_options=read_options)


class _ItemBatch(grain.transforms.Map):
  """Batch number -> the batch of `items` rows indices[b * B:(b + 1) * B], read in one call."""

  def __init__(self, items: features.ItemSource, indices: range, batcher: features.Batcher):
    self.items, self.indices, self.batcher = items, indices, batcher

  def map(self, element: int):
    size = self.batcher.batch_size
    return self.batcher(self.items.rows(self.indices[element * size:(element + 1) * size]))


# The catalog pass reads whole batches: two threads building batches ahead, a few batches kept.
_ITEM_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def item_batches(builder: tfds.core.DatasetBuilder, tokenizer: tokenizer_lib.Tokenizer,
                 batch_size: int, title_len: int, *, shard_index: int = 0, shard_count: int = 1,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """The catalog once, in item order (rows shard_index::shard_count), last batch padded.

  Batch: title_tokens/title_mask [B, Lt], image [B, S, S, 3], image_present, text_present,
  item_index, context [B, C], context_present [B, C], valid bool [B]. Each batch's records are
  read in one call and only the item fields decoded (features.ItemSource).
  """
  _source(builder, 'items')  # the split exists
  items = features.ItemSource(builder.data_dir)
  indices = _shard_rows(len(items), shard_index, shard_count)
  batcher = features.Batcher(features.ItemFields(tokenizer, title_len), batch_size, pad=True)
  ds = grain.MapDataset.range(-(-len(indices) // batch_size)).map(
      _ItemBatch(items, indices, batcher))
  return ds.to_iter_dataset(read_options or _ITEM_READ_OPTIONS)


def query_batches(queries: Sequence[str], tokenizer: tokenizer_lib.Tokenizer, batch_size: int,
                  max_len: int, *, trigram_buckets: int = 0, max_trigrams: int = 16
                  ) -> grain.MapDataset:
  """Query strings in order: query_tokens/query_mask [B, L], valid [B] (last batch padded).

  With trigram_buckets > 0 also trigram_ids/trigram_mask [B, max_trigrams].
  """
  if not queries:
    raise ValueError('query_batches needs at least one query.')
  fields = features.QueryFields(tokenizer, max_len, trigram_buckets, max_trigrams)
  batcher = features.Batcher(fields, batch_size, pad=True)
  return grain.MapDataset.source(list(queries)).batch(batch_size, batch_fn=batcher)


def query_vocabulary(builder: tfds.core.DatasetBuilder) -> list[str]:
  """The queries behind query_index: distinct train queries, sorted ([] without train data)."""
  if 'queries' not in builder.info.splits:
    return []
  return [features.to_str(row['query']) for row in builder.as_data_source(split='queries')]
