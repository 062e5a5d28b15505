"""Search logs: pages served by the lexical engine (plus exploration) and simulated clicks.

Each day, shoppers issue queries drawn by Zipf popularity. A page shows `page_size` items: the
engine's BM25 top list (boosted by latent quality, as production engines blend in popularity),
where each slot is replaced, with probability `explore_share`, by an exploration item (usually of
the query's category: another recall channel the lexical engine lacks). Cold items are not listed
before the last day; on the last (evaluation) day they are, and exploration favours them.

A shopper examines position p with probability 1 / (1 + p)^position_power (p = 0 is the top)
and clicks an examined item with sigmoid(bias + w_rel[grade] + w_a * attractiveness + w_q *
log quality); attractiveness rewards a low price for the category, a high rating and a good
condition. A purchase is a subset of clicks. Every impression is logged, clicked or not.
"""

import dataclasses

import numpy as np

from mmret.data import relevance
from mmret.data.synthshop import catalog as catalog_lib
from mmret.data.synthshop import engine as engine_lib
from mmret.data.synthshop import text as text_lib
from mmret.data.synthshop import vocab

_DEDUP_ROUNDS = 3


@dataclasses.dataclass
class Impressions:
  """Impression columns, all of length I, ordered by (page, position).

  query: int32 index into Queries.  item: int32 catalog index.  page: int64 global page number.
  position: int16 slot (0 = top).  click, purchase: bool.  relevance: int8 grade 0/1/2.
  day: int16 (0-based; the largest day is the evaluation day).
  """
  query: np.ndarray
  item: np.ndarray
  page: np.ndarray
  position: np.ndarray
  click: np.ndarray
  purchase: np.ndarray
  relevance: np.ndarray
  day: np.ndarray

  @classmethod
  def concatenate(cls, parts: list['Impressions']) -> 'Impressions':
    return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                 for f in dataclasses.fields(cls)))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


class _Pools:
  """Items grouped by category for exploration draws: concat [n], offsets [C], counts [C]."""

  def __init__(self, category: np.ndarray, allowed: np.ndarray):
    items = np.flatnonzero(allowed)
    order = np.argsort(category[items], kind='stable')
    self.items = items[order]
    self.counts = np.bincount(category[self.items], minlength=len(vocab.CATEGORIES))
    self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

  def draw(self, cats: np.ndarray, u: np.ndarray) -> np.ndarray:
    """int64, shape of cats: a uniform item of each category (-1 where the category is empty)."""
    counts = self.counts[cats]
    slot = self.offsets[cats] + np.minimum((u * counts).astype(np.int64), counts - 1)
    return np.where(counts > 0, self.items[np.clip(slot, 0, max(len(self.items) - 1, 0))], -1)


class MarketSimulator:
  """Serves and clicks the pages of one day at a time (bounded memory for large configs)."""

  def __init__(self, config, cat: catalog_lib.Catalog, queries: text_lib.Queries,
               titles: list[str]):
    self.config, self.cat, self.queries = config, cat, queries
    lc = config.logs
    self.num_days = lc.num_days
    live_early = ~cat.cold
    if not live_early.any():
      raise ValueError('synthshop config key catalog.cold_share: every item is cold, so nothing '
                       'can be shown before the last day.')
    self.top_early, self.top_last = self._top_lists(engine_lib.LexicalIndex(titles), live_early)
    self.pools_early = _Pools(cat.category, live_early)
    self.pools_last = _Pools(cat.category, np.ones(len(cat), bool))
    self.pools_cold = _Pools(cat.category, cat.cold)
    self.item_codes = cat.codes()  # [N, 6], the columns of queries.attrs

    # Attractiveness: cheap for its category, well rated (missing rating = neutral), good
    # condition. Standardised so the click weights mean the same for every catalog.
    log_price = np.log(cat.price.astype(np.float64))
    cat_median = np.array([np.median(log_price[cat.category == c]) if (cat.category == c).any()
                           else 0.0 for c in range(len(vocab.CATEGORIES))])
    rating = np.where(np.isnan(cat.rating), 3.9, cat.rating)
    raw = (-(log_price - cat_median[cat.category]) + 0.6 * (rating - 3.9)
           + vocab.CONDITION_VALUES[cat.condition] - 1.0)
    self.attract = ((raw - raw.mean()) / max(raw.std(), 1e-6)).astype(np.float32)
    self.log_quality = np.log(cat.quality).astype(np.float32)

  def _top_lists(self, index, live_early) -> tuple[np.ndarray, np.ndarray]:
    """int64 [Q, page_size] x 2: each query's engine results before / on the last day, -1 padded.

    One BM25 pass per query serves both: the last day only adds the cold items to the index.
    """
    m = self.config.logs.page_size
    prior = (self.config.logs.engine_quality_weight * np.log(self.cat.quality)).astype(np.float32)
    early = np.full((len(self.queries.texts), m), -1, np.int64)
    last = np.full_like(early, -1)
    for q, text in enumerate(self.queries.texts):
      items, scores = index.score(text)
      found = engine_lib.top_k(items, scores, m, allowed=live_early, prior=prior)
      early[q, :len(found)] = found
      found = engine_lib.top_k(items, scores, m, prior=prior)
      last[q, :len(found)] = found
    return early, last

  def _fill(self, rng, page_q, last_day: bool) -> np.ndarray:
    """int64 [P, M]: engine results with exploration slots, duplicates removed (-1)."""
    lc = self.config.logs
    p, m = len(page_q), lc.page_size
    items = (self.top_last if last_day else self.top_early)[page_q]
    explore = (rng.random((p, m)) < lc.explore_share) | (items < 0)
    cats = np.broadcast_to(self.queries.attrs[page_q, 0][:, None], (p, m)).astype(np.int64)
    pools = self.pools_last if last_day else self.pools_early
    for round_ in range(_DEDUP_ROUNDS + 1):
      in_cat = rng.random((p, m)) < lc.explore_in_category
      draw_cats = np.where(in_cat, cats, rng.integers(0, len(vocab.CATEGORIES), (p, m)))
      drawn = pools.draw(draw_cats, rng.random((p, m)))
      if last_day:
        cold = self.pools_cold.draw(draw_cats, rng.random((p, m)))
        drawn = np.where((rng.random((p, m)) < lc.cold_explore_share) & (cold >= 0), cold, drawn)
      items = np.where(explore, drawn, items)
      # Mark the later copy of any item shown twice on a page; redraw those slots.
      order = np.argsort(items, axis=1, kind='stable')
      ranked = np.take_along_axis(items, order, 1)
      dup_sorted = np.zeros((p, m), bool)
      dup_sorted[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
      dup = np.zeros((p, m), bool)
      np.put_along_axis(dup, order, dup_sorted, 1)
      explore = dup
      if not dup.any():
        break
      if round_ == _DEDUP_ROUNDS:
        items = np.where(dup, -1, items)
    return items

  def day(self, d: int) -> Impressions:
    """The impressions of day d (0-based); the same (config, d) always gives the same pages."""
    if not 0 <= d < self.num_days:
      raise ValueError(f'day {d} is outside [0, logs.num_days={self.num_days}).')
    lc, cc = self.config.logs, self.config.clicks
    rng = catalog_lib.rng_for(self.config.seed, catalog_lib.STREAM_LOGS, d)
    num_pages = lc.pages_per_day
    page_q = rng.choice(len(self.queries.texts), size=num_pages, p=self.queries.popularity)
    items = self._fill(rng, page_q, last_day=d == self.num_days - 1)
    valid = items >= 0
    safe = np.where(valid, items, 0)
    grade = relevance.grade_codes(self.queries.attrs[page_q][:, None, :], self.item_codes[safe])

    m = lc.page_size
    examine = (1.0 + np.arange(m)) ** -lc.position_power
    w_rel = np.asarray(cc.relevance_weights, np.float32)
    logit = (cc.bias + w_rel[grade] + cc.attract_weight * self.attract[safe]
             + cc.quality_weight * self.log_quality[safe])
    click = rng.random(items.shape) < examine * _sigmoid(logit)
    buy_logit = (cc.buy_bias + cc.buy_exact_weight * (grade == 2) + 0.5 * self.attract[safe]
                 + 0.3 * self.log_quality[safe])
    purchase = click & (rng.random(items.shape) < _sigmoid(buy_logit))

    rows, cols = np.nonzero(valid)
    return Impressions(
        query=page_q[rows].astype(np.int32), item=items[rows, cols].astype(np.int32),
        page=(d * num_pages + rows).astype(np.int64), position=cols.astype(np.int16),
        click=click[rows, cols], purchase=purchase[rows, cols],
        relevance=grade[rows, cols].astype(np.int8),
        day=np.full(len(rows), d, np.int16))

  def all_days(self) -> Impressions:
    """Every day's impressions concatenated (fine for tiny/small; large writes day by day)."""
    return Impressions.concatenate([self.day(d) for d in range(self.num_days)])
