"""Host-side inputs of the recall job: ID vocabularies, item statistics and groups, the
negative sampler, and the per-step batch (DESIGN.md §2-3).

Everything here is numpy and costs O(batch + negatives) per step. The only O(catalog) work is
done once: counting train impressions and clicks, and the negative sampler's CDF.

Item groups, from the train days (used for the head / tail / cold breakdown of evaluation):
  cold  no train impression (SynthShop's cold items are listed only on the eval day)
  head  the most-clicked items that together hold `head_click_share` (default 50%) of the train
        clicks (ties broken by catalog order)
  tail  every other item with at least one train impression
"""

import dataclasses

import numpy as np

from mmret.data import prepare as prepare_lib
from mmret.embeddings import hashing

GROUPS = ('head', 'tail', 'cold')
# The keys of the train step's batch (train_batch), in order.
BATCH_KEYS = ('query_index', 'query_rows', 'positives', 'positive_rows', 'positive_mask',
              'positive_log_q', 'negatives', 'negative_rows', 'negative_log_q')


@dataclasses.dataclass
class ItemStats:
  """Train-day posterior statistics of the catalog. All arrays [N], catalog order."""
  impressions: np.ndarray   # float32
  clicks: np.ndarray        # float32, positive interactions (click or purchase)
  category: np.ndarray      # int32, 1 + category index; 0 = none
  num_categories: int

  def gate_features(self) -> np.ndarray:
    """float32 [N, 3]: log1p(impressions), log1p(clicks), CTR (the gate's input)."""
    ctr = self.clicks / np.maximum(self.impressions, 1.0)
    return np.stack([np.log1p(self.impressions), np.log1p(self.clicks), ctr],
                    axis=-1).astype(np.float32)

  def groups(self, head_click_share: float = 0.5) -> dict[str, np.ndarray]:
    """name -> bool [N] membership of 'head', 'tail', 'cold' (a partition of the catalog)."""
    cold = self.impressions == 0
    order = np.argsort(-self.clicks, kind='stable')
    cum = np.cumsum(self.clicks[order])
    total = max(float(cum[-1]) if cum.size else 0.0, 1e-9)
    # Smallest prefix of the most-clicked items reaching the share (at least one item).
    n_head = int(np.searchsorted(cum, head_click_share * total, side='left')) + 1
    head = np.zeros_like(cold)
    head[order[:n_head]] = True
    head &= (self.clicks > 0) & ~cold
    return {'head': head, 'tail': ~head & ~cold, 'cold': cold}


def item_stats(data: prepare_lib.PreparedData) -> ItemStats:
  dataset = data.dataset
  cols = dataset.columns()
  n = len(dataset.items)
  train = ~cols.is_eval
  impressions = np.bincount(cols.item[train], minlength=n).astype(np.float32)
  clicks = np.bincount(cols.item[train & cols.positive], minlength=n).astype(np.float32)
  names = sorted({it.category for it in dataset.items if it.category})
  cat_index = {c: k + 1 for k, c in enumerate(names)}
  category = np.array([cat_index.get(it.category, 0) for it in dataset.items], np.int32)
  return ItemStats(impressions, clicks, category, len(names))


class NegativeSampler:
  """Negatives drawn i.i.d. from the (smoothed) click distribution over the whole catalog.

  The CDF is computed once; a draw is a binary search per sample (O(S log N)), so sampling
  10k negatives from 10^9 items costs the same as from 10^4. q_i = (clicks_i + smoothing) / Z
  over the items in `support` (default: all): the smoothing lets never-clicked items be
  negatives too. The job's support is the items listed on the train days: an item that does
  not exist yet (cold) must not be taught to lose against every query before it appears.
  """

  def __init__(self, clicks: np.ndarray, smoothing: float = 1.0,
               support: np.ndarray | None = None):
    weights = np.asarray(clicks, np.float64) + smoothing
    if support is not None:
      weights = np.where(support, weights, 0.0)
    if weights.sum() <= 0:
      raise ValueError('the negative sampler needs clicks or a positive smoothing.')
    with np.errstate(divide='ignore'):  # log q = -inf outside the support: never drawn
      self.log_q_all = np.log(weights / weights.sum()).astype(np.float32)
    self._cdf = np.cumsum(weights / weights.sum())
    self._cdf[-1] = 1.0

  def log_q(self, ids: np.ndarray) -> np.ndarray:
    return self.log_q_all[ids]

  def sample(self, count: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [count], log q float32 [count]); deterministic in (seed, step), so a resumed
    run draws the same negatives without checkpointing a sampler state."""
    rng = np.random.default_rng([seed, step])
    u = rng.random(count)
    # Searching (and gathering log q) in sorted order walks the [N] tables forwards, so nearby
    # draws share cache lines: ~5x faster at 10^7 items on CPU. Scattered back to draw order,
    # the result is bit-identical to searching u as drawn.
    order = np.argsort(u)
    found = np.minimum(np.searchsorted(self._cdf, u[order], side='right'),
                       self._cdf.size - 1).astype(np.int32)
    ids = np.empty(count, np.int32)
    ids[order] = found
    log_q = np.empty(count, np.float32)
    log_q[order] = self.log_q_all[found]
    return ids, log_q


@dataclasses.dataclass
class IdMaps:
  """ID -> row maps of the two ID tables and the frozen query-vector table's order.

  queries: every query with a stage-1 vector: the train vocabulary (query_index order) first,
    then the eval queries unseen in train.
  query_rows: int32 [len(queries)] query-ID-table row of each (hashed bucket when unseen).
  item_rows: int32 [N] item-ID-table row of each catalog item (hashed bucket when the item had
    no train impression: in production a new item's ID is unknown to the trained table).
  item_cold_rows: int32 [N] the row each item's ID would look up if it had no train impression
    (`IdVocabulary.unseen_row`; equal to item_rows for cold items). Cold-start dropout
    (train.cold_dropout) presents a train item with this row, exactly as eval presents a cold one.
  """
  query_vocab: hashing.IdVocabulary
  item_vocab: hashing.IdVocabulary
  queries: list[str]
  query_rows: np.ndarray
  item_rows: np.ndarray
  item_cold_rows: np.ndarray

  def query_position(self) -> dict[str, int]:
    return {q: i for i, q in enumerate(self.queries)}


def id_maps(data: prepare_lib.PreparedData, train_queries: list[str], eval_queries: list[str],
            stats: ItemStats, query_buckets: int, item_buckets: int) -> IdMaps:
  known = set(train_queries)
  queries = list(train_queries) + [q for q in dict.fromkeys(eval_queries) if q not in known]
  query_vocab = hashing.IdVocabulary(train_queries, query_buckets, salt='query:')
  item_ids = [it.item_id for it in data.dataset.items]
  seen = [i for i, n in zip(item_ids, stats.impressions) if n > 0]
  item_vocab = hashing.IdVocabulary(seen, item_buckets, salt='item:')
  return IdMaps(query_vocab, item_vocab, queries, query_vocab.rows(queries),
                item_vocab.rows(item_ids), item_vocab.unseen_rows(item_ids))


def train_batch(pages: dict[str, np.ndarray], maps: IdMaps, sampler: NegativeSampler, *,
                num_negatives: int, seed: int, step: int) -> dict[str, np.ndarray]:
  """A recall_pages batch -> the train step's batch (ARCHITECTURE.md, recall contracts).

  query_index [B] (row of the frozen query vectors = the train query_index), query_rows [B],
  positives / positive_rows int32 [B, P], positive_mask bool [B, P], positive_log_q [B, P],
  negatives / negative_rows int32 [S], negative_log_q [S].
  """
  positives = pages['positives'].astype(np.int32)
  mask = pages['positive_mask'].astype(bool)
  positives = np.where(mask, positives, 0)
  negatives, neg_log_q = sampler.sample(num_negatives, seed, step)
  query_index = pages['query_index'].astype(np.int32)
  return {
      'query_index': query_index,
      'query_rows': maps.query_rows[query_index],
      'positives': positives,
      'positive_rows': maps.item_rows[positives],
      'positive_mask': mask,
      # Padded slots point at item 0, which may lie outside the sampler's support (-inf).
      'positive_log_q': np.where(mask, sampler.log_q(positives), 0.0).astype(np.float32),
      'negatives': negatives,
      'negative_rows': maps.item_rows[negatives],
      'negative_log_q': neg_log_q,
  }
