"""The SynthShop catalog as columns of small integer codes (vectorised, millions of rows fit).

An item is one row: category / color / pattern / material / audience / brand / condition codes
(indices into the tables of `vocab`), a price, a rating (NaN = missing), a latent quality and two
flags (cold: listed only on the evaluation day; has_image). Text and pixels are derived from these
columns later (text.py, render.py), so the columns are the single source of truth.
"""

import dataclasses

import numpy as np

from mmret.data.synthshop import vocab

# Independent random streams, one per purpose, so that changing one part of the generator (say,
# the number of queries) leaves the catalog of the same seed unchanged.
STREAM_CATALOG, STREAM_RENDER, STREAM_TEXT, STREAM_QUERIES, STREAM_LOGS = range(5)


def rng_for(seed: int, stream: int, *extra: int) -> np.random.Generator:
  """The numpy Generator of one purpose (`stream`) and optional sub-stream ids (`extra`)."""
  return np.random.default_rng([seed, stream, *extra])


def zipf_probs(n: int, exponent: float) -> np.ndarray:
  """float64 [n]: p(rank r) proportional to 1 / (r + 1)^exponent."""
  p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
  return p / p.sum()


@dataclasses.dataclass
class Catalog:
  """Item columns, all of length N (the catalog order is the item index everywhere).

  category, color, pattern, material, audience, condition: int16 [N] codes into
    vocab.CATEGORY_NAMES, COLOR_NAMES, PATTERN_NAMES, MATERIAL_NAMES, AUDIENCE_NAMES,
    CONDITION_NAMES.
  brand: int32 [N], index into `brands` (index = popularity rank).
  price: float32 [N] > 0.  rating: float32 [N] in [1, 5], NaN = missing.
  quality: float32 [N] > 0, log-normal latent popularity (head items have large values).
  cold: bool [N], listed only on the last day.  has_image: bool [N].
  brands: brand names.
  """
  category: np.ndarray
  color: np.ndarray
  pattern: np.ndarray
  material: np.ndarray
  audience: np.ndarray
  condition: np.ndarray
  brand: np.ndarray
  price: np.ndarray
  rating: np.ndarray
  quality: np.ndarray
  cold: np.ndarray
  has_image: np.ndarray
  brands: list[str]

  def __len__(self) -> int:
    return len(self.category)

  @property
  def item_ids(self) -> list[str]:
    """'i000017'-style ids, zero-padded to the catalog's width so they sort in catalog order."""
    width = max(6, len(str(len(self) - 1)))
    return [f'i{i:0{width}d}' for i in range(len(self))]

  def codes(self) -> np.ndarray:
    """int32 [N, 6]: category, color, pattern, material, audience, brand (text.QUERY_ATTRIBUTES)."""
    return np.stack([self.category, self.color, self.pattern, self.material, self.audience,
                     self.brand], axis=1).astype(np.int32)

  def attributes(self, i: int) -> dict[str, str]:
    """The ground-truth attribute dict of item i (what relevance grading compares)."""
    return {
        'category': vocab.CATEGORY_NAMES[self.category[i]],
        'color': vocab.COLOR_NAMES[self.color[i]],
        'pattern': vocab.PATTERN_NAMES[self.pattern[i]],
        'material': vocab.MATERIAL_NAMES[self.material[i]],
        'audience': vocab.AUDIENCE_NAMES[self.audience[i]],
        'brand': self.brands[self.brand[i]],
    }


def _choice_table(options: list[tuple[str, ...]], names: tuple[str, ...]) -> tuple[np.ndarray,
                                                                                     np.ndarray]:
  """Per-category allowed codes, padded: (codes int16 [C, max_options], counts int64 [C])."""
  width = max(len(o) for o in options)
  table = np.zeros((len(options), width), np.int16)
  counts = np.array([len(o) for o in options], np.int64)
  for row, opts in enumerate(options):
    table[row, :len(opts)] = [names.index(o) for o in opts]
  return table, counts


def _pick_allowed(rng: np.random.Generator, category: np.ndarray,
                  options: list[tuple[str, ...]], names: tuple[str, ...]) -> np.ndarray:
  """int16 [N]: a uniformly chosen allowed code per item, given its category (vectorised)."""
  table, counts = _choice_table(options, names)
  slot = np.floor(rng.random(len(category)) * counts[category]).astype(np.int64)
  return table[category, slot]


def sample_catalog(config) -> Catalog:
  """Samples the catalog columns from `config` (a SynthShop config, see config.py)."""
  cc = config.catalog
  n = cc.num_items
  rng = rng_for(config.seed, STREAM_CATALOG)
  cats = vocab.CATEGORIES
  cat_p = np.array([c.weight for c in cats], np.float64)
  category = rng.choice(len(cats), size=n, p=cat_p / cat_p.sum()).astype(np.int16)
  color = rng.integers(0, len(vocab.COLOR_NAMES), n).astype(np.int16)
  pattern_p = np.array(vocab.PATTERN_WEIGHTS) / sum(vocab.PATTERN_WEIGHTS)
  pattern = rng.choice(len(vocab.PATTERN_NAMES), size=n, p=pattern_p).astype(np.int16)
  material = _pick_allowed(rng, category, [c.materials for c in cats], vocab.MATERIAL_NAMES)
  audience = _pick_allowed(rng, category, [c.audiences for c in cats], vocab.AUDIENCE_NAMES)
  cond_p = np.array(vocab.CONDITION_WEIGHTS) / sum(vocab.CONDITION_WEIGHTS)
  condition = rng.choice(len(vocab.CONDITION_NAMES), size=n, p=cond_p).astype(np.int16)
  brand = rng.choice(cc.num_brands, size=n, p=zipf_probs(cc.num_brands, cc.brand_zipf))

  # Latent quality: log-normal, plus a bonus for popular brands (rank 0 is the most popular),
  # so a few items are head items and most are tail items.
  log_q = cc.quality_sigma * rng.standard_normal(n) - 0.3 * np.log1p(brand) / np.log(10)
  quality = np.exp(log_q - log_q.mean()).astype(np.float32)
  z = (log_q - log_q.mean()) / max(log_q.std(), 1e-6)

  base = np.array([c.base_price for c in cats], np.float64)[category]
  # Better items cost a little more; used goods sell at a discount.
  price = base * np.exp(0.35 * rng.standard_normal(n) + 0.1 * z)
  price *= np.array([1.0, 0.8, 0.55])[condition]
  price = np.round(np.maximum(price, 1.0), 2).astype(np.float32)
  rating = np.clip(3.9 + 0.45 * z + 0.5 * rng.standard_normal(n), 1.0, 5.0)
  rating = np.round(rating, 1).astype(np.float32)
  rating[rng.random(n) < cc.missing_rating_share] = np.nan
  cold = rng.random(n) < cc.cold_share
  has_image = rng.random(n) >= cc.missing_image_share
  return Catalog(category=category, color=color, pattern=pattern, material=material,
                 audience=audience, condition=condition, brand=brand.astype(np.int32),
                 price=price, rating=rating, quality=quality, cold=cold, has_image=has_image,
                 brands=vocab.brand_names(cc.num_brands))
