"""Grain pipelines over a prepared TFDS dataset -> fixed-shape numpy batches (ARCHITECTURE.md).

  pretrain_pairs  one positive (query, item) pair per row, for stage-1 pre-training
  recall_pages    one clicked page per row (query_index, up to 3 positives), for stage 2
  item_batches    the whole catalog in order, for item vectors at evaluation time
  query_batches   a list of query strings, for query vectors at evaluation time

Every training pipeline has the same shape:
  source split -> shard (rows shard_index::shard_count, so processes see disjoint slices) ->
  shuffle(seed) -> repeat(num_epochs) -> batch;
pretrain_pairs makes each batch from its batch number instead (the same rows: the shuffled
training pairs' row numbers), reading and decoding only those rows and their items.
`num_epochs=None` repeats forever (each epoch reshuffled, deterministically) and batches have
exactly `batch_size` rows and no `valid` field. A finite `num_epochs` (evaluation) keeps the
short last batch, padded to `batch_size` by repeating its last row, with `valid` bool [B].
The result is a `grain.IterDataset`: `it = iter(ds)`; `it.get_state()` / `it.set_state(s)`
checkpoint the position (grain.checkpoint handlers do this through orbax).
"""

from collections.abc import Sequence
import sys

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from mmret.data import features
from mmret.data import tokenizer as tokenizer_lib

# Threads decoding rows in parallel. Decoding is mostly numpy/protobuf work that releases the
# GIL only in part, so a few threads suffice; the prefetch buffer smooths the join's latency.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)


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
  # Infinite streams never end, so drop_remainder only matters for finite ones, which pad.
  return it.batch(batcher.batch_size, drop_remainder=False, batch_fn=batcher)


def _check_training_positives(builder: tfds.core.DatasetBuilder, split: str) -> None:
  # A filter over an infinite stream without a single positive would spin forever.
  if split == 'train' and 'train_pages' not in builder.info.splits:
    raise ValueError('the train split has no positive interaction (no click, purchase or '
                     'engagement): nothing to pre-train on.')


class PairBatchRows:
  """Batch number -> the row numbers of that training batch: the rows shard_index::shard_count
  of the split, shuffled per epoch exactly as `MapDataset.shuffle(seed).repeat()` orders them,
  kept where `keep`, and cut into batches of batch_size in that order (the last one short
  when epochs is finite). Any process computes any batch on its own (Grain workers), and the
  batches do not depend on how many compute them. An epoch's order is made when first asked
  (~14 us a row: 1.4 s for SynthShop `small`'s 100k train rows) and the last two are kept."""

  def __init__(self, keep: np.ndarray, *, shard_index: int, shard_count: int, seed: int,
               batch_size: int, epochs: int | None):
    self.keep, self.seed, self.batch_size = np.asarray(keep, bool), seed, batch_size
    self.shard_index, self.shard_count = shard_index, shard_count
    self.size = len(range(shard_index, len(self.keep), shard_count))   # rows of the shard
    self.kept = int(self.keep[shard_index::shard_count].sum())          # kept rows an epoch
    self.num_batches = (sys.maxsize if epochs is None
                        else -(-self.kept * epochs // batch_size))
    self.total = None if epochs is None else self.kept * epochs
    self._epochs: dict[int, np.ndarray] = {}

  def epoch(self, e: int) -> np.ndarray:
    """int64 [kept]: the kept row numbers of epoch e, in order."""
    if e not in self._epochs:
      order = grain.MapDataset.range(len(self.keep))[self.shard_index::self.shard_count]
      order = order.shuffle(seed=self.seed).repeat(None)
      rows = np.fromiter((order[e * self.size + i] for i in range(self.size)), np.int64,
                         self.size)
      self._epochs = {k: v for k, v in self._epochs.items() if k == e - 1}
      self._epochs[e] = rows[self.keep[rows]]
    return self._epochs[e]

  def __call__(self, batch: int) -> list[int]:
    first = batch * self.batch_size
    last = first + self.batch_size if self.total is None else min(first + self.batch_size,
                                                                   self.total)
    out = []
    for e in range(first // self.kept, (last - 1) // self.kept + 1):
      rows = self.epoch(e)
      out += rows[max(first - e * self.kept, 0):last - e * self.kept].tolist()
    return out

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_epochs'}

  def __setstate__(self, state):
    self.__dict__.update(state, _epochs={})


class _PairBatch(grain.transforms.Map):
  """Batch number -> batch (PairBatchRows, then features.PairRows through the Batcher)."""

  def __init__(self, rows: PairBatchRows, batcher: features.Batcher):
    self.rows, self.batcher = rows, batcher

  def map(self, element: int) -> dict[str, np.ndarray]:
    return self.batcher(self.rows(element))


def pretrain_pairs(builder: tfds.core.DatasetBuilder, tokenizer: tokenizer_lib.Tokenizer, *,
                   keep: np.ndarray, batch_size: int, seed: int, query_len: int,
                   title_len: int, shard_index: int = 0, shard_count: int = 1,
                   num_epochs: int | None = None, split: str = 'train',
                   workers: int = 0) -> grain.IterDataset:
  """The training pairs of `split` (keep: bool [rows of the split], positives.training_rows)
  joined with their items' features.

  A batch's rows are the next batch_size of the shard's rows (shard_index::shard_count),
  shuffled per epoch, that `keep` keeps (PairBatchRows): the batches of a source -> shuffle ->
  repeat -> filter -> batch pipeline over the decoded split, in its order
  (tests/test_tfds_pipeline.py checks this), but only the kept rows are read and decoded, a
  batch's pair rows in one call and their items in another (features.PairRows). workers > 0
  makes the batches in that many Grain worker processes: the same batches in the same order.

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
  _shard_rows(num_rows, shard_index, shard_count)
  rows = PairBatchRows(keep, shard_index=shard_index, shard_count=shard_count, seed=seed,
                       batch_size=batch_size, epochs=num_epochs)
  if not rows.kept:
    raise ValueError(f'the {split!r} split has no training pair (no click, purchase or '
                     'engagement outside the held-out queries) in shard '
                     f'{shard_index} of {shard_count}: nothing to pre-train on.')
  fields = features.PairRows(builder.data_dir, split,
                             features.PairFields(tokenizer, query_len, title_len))
  batcher = features.Batcher(fields, batch_size, pad=num_epochs is not None)
  ds = grain.MapDataset.range(rows.num_batches).map(_PairBatch(rows, batcher))
  # A batch is one element: made on next() in this process, or ahead in the workers.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers:
    # Grain's workers read absl flags (their defaults); mmret parses its own command line.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


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
