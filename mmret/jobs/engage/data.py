"""Page-structured data for Que2Engage (DESIGN.md §4): engaged pairs with their page negatives,
and the labelled eval-day impressions for the engagement / relevance ROC-AUCs.

Training row = one engaged (query, item) impression plus up to H items impressed on the *same
page* and not engaged (the source's hard negatives, "mixed negatives" when joined with the
in-batch ones). The labelled impressions of the multitask loss are the row's positive (label 1)
and its negatives (label 0).

  examples = page_examples(data.dataset, split='train')           # in memory, numpy
  ds = engage_pages(examples, data.builder, data.tokenizer, batch_size=32, seed=0,
                    num_negatives=4, query_len=12, title_len=24,
                    trigram_buckets=4096, max_trigrams=24)
  batch = next(iter(ds))

Batch (numpy, fixed shapes, G = 1 + H; slot 0 is the engaged item):
  query_tokens/query_mask [B, Lq], trigram_ids/trigram_mask [B, T], query_index [B]
  title_tokens/title_mask [B, G, Lt], text_present [B, G], image uint8 [B, G, S, S, 3],
  image_present [B, G], context float32 [B, G, C], context_present [B, G, C],
  item_index int32 [B, G], doc_mask bool [B, G] (False = padding slot: a page with fewer than
  H negatives), engaged float32 [B, G] (1 for slot 0, 0 for the negatives), page_index [B].

Engagement label of an impression: `engaged` if logged, else click or purchase if either is
(interaction_log.engagement_label); impressions without any label are not used. The page
of an impression is its page_id, else (query, day) (records.Dataset.page_keys). Each pass over
a row draws its H negatives afresh (uniformly among the page's non-engaged items), seeded by
the pipeline seed and the row's position in the stream, so a resumed iterator sees the same
draws.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmret.data import features
from mmret.data import pipelines
from mmret.data import records
from mmret.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class PageExamples:
  """R training rows. query: [R] strings; query_index int32 [R] (-1 unknown); positive int32 [R];
  negatives int32 [R, P] (the page's non-engaged items, best positions first) with
  negative_mask bool [R, P]; page_index int32 [R]."""
  query: list[str]
  query_index: np.ndarray
  positive: np.ndarray
  negatives: np.ndarray
  negative_mask: np.ndarray
  page_index: np.ndarray

  def __len__(self) -> int:
    return len(self.query)

  def row(self, i: int) -> dict[str, Any]:
    return {'query': self.query[i], 'query_index': int(self.query_index[i]),
            'positive': int(self.positive[i]), 'negatives': self.negatives[i],
            'negative_mask': self.negative_mask[i], 'page_index': int(self.page_index[i])}


def page_examples(dataset: records.Dataset, split: str = 'train', max_page_negatives: int = 32
                  ) -> PageExamples:
  """Groups a split's labelled impressions by page: one row per distinct engaged item of a page.

  Pages without an engaged item give no row (nothing to rank their negatives against); an item
  engaged on a page is never one of that page's negatives. Rows come page by page (pages in
  order of their first impression on the split), a page's engaged items and its negatives in
  position order (ties and unranked impressions: log order, unranked last); a row's query is
  its page's first. Vectorised over Dataset.columns (SynthShop `large`: 14M impressions).
  """
  cols = dataset.columns()
  if split not in records.SPLITS:
    raise ValueError(f'page_examples: split {split!r} is not one of {records.SPLITS}')
  rows = np.flatnonzero((cols.is_eval == (split == 'eval')) & (cols.engagement >= 0))
  rank = np.where(cols.position[rows] >= 0, cols.position[rows], np.iinfo(np.int64).max)
  rows = rows[np.lexsort((rows, rank, cols.page[rows]))]  # by page, then position, then row
  page, item, engaged = cols.page[rows], cols.item[rows], cols.engagement[rows] == 1
  starts = np.flatnonzero(np.r_[True, page[1:] != page[:-1]]) if rows.size else rows[:0]
  pages = page[starts]                                          # [N] sorted page numbers
  first_row = np.minimum.reduceat(rows, starts) if rows.size else rows[:0]
  slot = np.searchsorted(pages, page)                           # page of each impression
  pair = page * (int(item.max(initial=0)) + 1) + item           # (page, item) as one key
  engaged_at = _first(pair, engaged)                            # distinct engaged pairs
  negative_at = _first(pair, ~engaged & ~np.isin(pair, pair[engaged_at]))
  # The first max_page_negatives distinct negatives of each page, in position order.
  nth = np.arange(negative_at.size) - np.searchsorted(slot[negative_at], slot[negative_at])
  keep = nth < max_page_negatives
  negatives = np.zeros((pages.size, max_page_negatives), np.int32)
  mask = np.zeros((pages.size, max_page_negatives), bool)
  negatives[slot[negative_at][keep], nth[keep]] = item[negative_at][keep]
  mask[slot[negative_at][keep], nth[keep]] = True
  # One row per engaged pair, pages in order of their first impression on the split.
  engaged_at = engaged_at[np.argsort(first_row[slot[engaged_at]], kind='stable')]
  row_page = slot[engaged_at]
  query = cols.query[rows[starts]][row_page]                    # the page's first query
  train_queries = sorted({cols.queries[q] for q in np.unique(cols.query[~cols.is_eval])})
  return PageExamples(
      query=[cols.queries[q] for q in query.tolist()],
      query_index=cols.rows({q: i for i, q in enumerate(train_queries)})[
          rows[starts][row_page]].astype(np.int32) if query.size else np.zeros(0, np.int32),
      positive=item[engaged_at].astype(np.int32), negatives=negatives[row_page],
      negative_mask=mask[row_page], page_index=pages[row_page].astype(np.int32))


def _first(key: np.ndarray, where: np.ndarray) -> np.ndarray:
  """Sorted positions i with where[i] whose key[i] does not occur at an earlier such position."""
  at = np.flatnonzero(where)
  _, first = np.unique(key[at], return_index=True)
  return at[np.sort(first)]


class _Rows:
  """Random access to PageExamples rows (a Grain source)."""

  def __init__(self, examples: PageExamples):
    self.examples = examples

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.examples.row(int(i))


class JoinPage(grain.transforms.RandomMap):
  """Row -> the row plus item rows for slot 0 (positive) and H drawn negatives (padded)."""

  def __init__(self, builder_dir: str, num_negatives: int):
    self.items = features.ItemSource(builder_dir)
    self.num_negatives = num_negatives

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    h = self.num_negatives
    pool = element['negatives'][element['negative_mask']]
    picked = rng.choice(pool, size=min(h, pool.size), replace=False) if h else pool[:0]
    slots = [element['positive'], *picked.tolist()]
    valid = np.arange(1 + h) < len(slots)
    slots += [element['positive']] * (1 + h - len(slots))   # padding repeats a real item
    out = {k: element[k] for k in ('query', 'query_index', 'page_index')}
    out['items'] = [self.items[int(i)] for i in slots]
    out['doc_mask'] = valid
    return out


class PageFields:
  """Rows of JoinPage -> the page batch of the module docstring."""

  def __init__(self, tokenizer, query_len: int, title_len: int, num_buckets: int,
               max_trigrams: int):
    self.tokenizer, self.query_len, self.title_len = tokenizer, query_len, title_len
    self.num_buckets, self.max_trigrams = num_buckets, max_trigrams

  def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    queries = [features.to_str(r['query']) for r in rows]
    batch = features.query_features(queries, self.tokenizer, self.query_len)
    batch.update(features.trigram_features(queries, self.num_buckets, self.max_trigrams))
    b, g = len(rows), len(rows[0]['items'])
    items = [it for r in rows for it in r['items']]
    docs = features.item_features(items, self.tokenizer, self.title_len)
    batch.update({k: v.reshape(b, g, *v.shape[1:]) for k, v in docs.items()})
    batch['doc_mask'] = np.stack([r['doc_mask'] for r in rows]).astype(bool)
    batch['engaged'] = np.zeros((b, g), np.float32)
    batch['engaged'][:, 0] = 1.0
    batch['query_index'] = np.array([r['query_index'] for r in rows], np.int32)
    batch['page_index'] = np.array([r['page_index'] for r in rows], np.int32)
    return batch


def engage_pages(examples: PageExamples, builder: tfds.core.DatasetBuilder,
                 tokenizer: tokenizer_lib.Tokenizer, *, batch_size: int, seed: int,
                 num_negatives: int, query_len: int, title_len: int, trigram_buckets: int,
                 max_trigrams: int, shard_index: int = 0, shard_count: int = 1,
                 num_epochs: int | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Page batches (module docstring): shard -> shuffle -> repeat -> draw negatives + join ->
  batch. num_epochs=None repeats forever with full batches; a number pads the last batch and
  adds `valid` [B] (as every pipeline in mmret.data.pipelines)."""
  if not len(examples):  # pylint: disable=g-explicit-length-test
    raise ValueError('no engaged impression on any train page: nothing to train Que2Engage on.')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} is not in [0, {shard_count}).')
  ds = grain.MapDataset.source(_Rows(examples))[shard_index::shard_count]
  ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.random_map(JoinPage(builder.data_dir, num_negatives), seed=seed)
  it = ds.to_iter_dataset(read_options or pipelines.DEFAULT_READ_OPTIONS)
  fields = PageFields(tokenizer, query_len, title_len, trigram_buckets, max_trigrams)
  batcher = features.Batcher(fields, batch_size, pad=num_epochs is not None)
  return it.batch(batch_size, drop_remainder=False, batch_fn=batcher)


@dataclasses.dataclass
class LabelledImpressions:
  """A split's labelled impressions (the AUC eval data). query: [I] strings; item int32 [I];
  engaged bool [I]; relevance float32 [I] (logged grade >= 0, -1 absent)."""
  query: list[str]
  item: np.ndarray
  engaged: np.ndarray
  relevance: np.ndarray


def labelled_impressions(dataset: records.Dataset, split: str = 'eval') -> LabelledImpressions:
  """Every impression of `split` with an engagement label (docs/DATA.md split rule), in log
  order."""
  cols = dataset.columns()
  rows = np.flatnonzero((cols.is_eval == (split == 'eval')) & (cols.engagement >= 0))
  rel = cols.relevance[rows]
  return LabelledImpressions(
      query=[cols.queries[q] for q in cols.query[rows].tolist()],
      item=cols.item[rows].astype(np.int32), engaged=cols.engagement[rows] == 1,
      relevance=np.where(np.isnan(rel), -1, rel).astype(np.float32))
