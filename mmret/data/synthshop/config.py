"""SynthShop's config: sizes, defaults, validation and the canonical JSON form used for caching.

`default_config(size)` returns a ConfigDict whose every field is set (no None), so a locked parent
config (configs/pretrain.py places it under `data.synthshop`) can override any of them.
  'tiny'   tests: 200 items, 40 queries, 3 days; generates in well under 3 s.
  'small'  CPU demo: 3000 items, 300 queries, 6 days; a few seconds including PNG writing.
  'medium' ANN evaluation on CPU: 200k items, 3000 queries, 6 days of 10k pages; minutes on a
           2-core machine (docs/PERFORMANCE.md).
  'large'  accelerators: 2M items, 20k queries, 7 days; catalog and logs are built in vectorised
           chunks, and interactions are written a day at a time.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from mmret.data.synthshop import text as text_lib
from mmret.data.synthshop import vocab

SIZES = ('tiny', 'small', 'medium', 'large')


def default_config(size: str = 'small') -> ml_collections.ConfigDict:
  """The generator config for one of SIZES; raises ValueError naming an unknown size."""
  if size not in SIZES:
    raise ValueError(f'synthshop size {size!r} is unknown; choose from {SIZES}.')
  tiny, medium, large = size == 'tiny', size == 'medium', size == 'large'

  def pick(t, s, m, l):  # the value for tiny / small / medium / large
    return t if tiny else (m if medium else (l if large else s))
  c = ml_collections.ConfigDict()
  c.size = size
  c.seed = 0

  c.catalog = ml_collections.ConfigDict()
  c.catalog.num_items = pick(200, 3000, 200_000, 2_000_000)
  c.catalog.num_brands = pick(20, 150, 1000, 3000)
  c.catalog.brand_zipf = 1.1          # brand popularity ~ 1 / rank^s
  c.catalog.quality_sigma = 1.4       # log-normal latent quality: a few head items, a long tail
  c.catalog.cold_share = 0.08         # items listed only on the last (evaluation) day
  c.catalog.missing_image_share = 0.05  # items without an image (a missing modality)
  c.catalog.missing_rating_share = 0.05  # new sellers without a rating (missing context)

  c.images = ml_collections.ConfigDict()
  c.images.size = 32                  # square side in pixels, 8..224
  c.images.chunk = 512                # items rendered per vectorised batch (bounds memory)

  c.text = ml_collections.ConfigDict()
  # Probability that a title leaves out the color / the pattern: the image still shows it.
  c.text.omit_color_prob = 0.5
  c.text.omit_pattern_prob = 0.5
  c.text.title_canonical_prob = 0.4   # title uses the canonical category name (else synonyms)
  c.text.query_canonical_prob = 0.5   # query uses the canonical name (else query-only synonyms)
  c.text.material_in_title_prob = 0.7
  c.text.description_prob = 0.3       # share of items with a (short) description

  c.queries = ml_collections.ConfigDict()
  c.queries.num_queries = pick(40, 300, 3000, 20_000)
  c.queries.zipf = 1.0                # query popularity ~ 1 / rank^s
  # Query types (relative weights): which attributes besides the category a query names.
  # Brand queries ('aurora bags') make the query space large enough for the 'large' size.
  c.queries.type_weights = ml_collections.ConfigDict(dict(
      category=0.25, color=0.25, pattern=0.12, material=0.08, color_pattern=0.12,
      color_material=0.05, audience=0.05, audience_color=0.03, brand=0.05))

  c.logs = ml_collections.ConfigDict()
  c.logs.num_days = pick(3, 6, 6, 7)  # the last day is the evaluation day
  c.logs.pages_per_day = pick(80, 1000, 10_000, 100_000)
  c.logs.page_size = 10 if tiny else 20
  c.logs.explore_share = 0.25         # page slots filled by exploration instead of the engine
  c.logs.explore_in_category = 0.8    # exploration draws from the query's category (else any)
  c.logs.cold_explore_share = 0.3     # on the last day, exploration draws cold items this often
  c.logs.engine_quality_weight = 0.3  # engine score = BM25 + w * log(quality)
  c.logs.position_power = 0.8         # examination probability = 1 / (1 + position)^p

  c.clicks = ml_collections.ConfigDict()
  c.clicks.bias = -2.5                # click logit intercept
  c.clicks.relevance_weights = (-2.0, 1.0, 3.0)  # added to the logit for grade 0 / 1 / 2
  c.clicks.attract_weight = 0.8       # price (cheaper), rating and condition
  c.clicks.quality_weight = 0.9       # latent quality (log)
  c.clicks.buy_bias = -3.0            # purchase logit intercept, given a click
  c.clicks.buy_exact_weight = 1.0     # exact matches convert better

  # The small-label regime (issue 14): with num_queries > 0, interactions.jsonl holds no clicks
  # at all, only graded judgements (query, item, relevance 0/1/2, split) of the first
  # `per_query` distinct items shown for each of the `num_queries` most-shown queries, a
  # judged product-search set in miniature. A query is eval when a fixed hash of it is below
  # eval_share (queries, not pairs, are split). 0 = the click log.
  c.judged = ml_collections.ConfigDict()
  c.judged.num_queries = 0
  c.judged.per_query = 20
  c.judged.eval_share = 0.3
  return c


_SHARES = ('catalog.cold_share', 'catalog.missing_image_share', 'catalog.missing_rating_share',
           'text.omit_color_prob', 'text.omit_pattern_prob', 'text.title_canonical_prob',
           'text.query_canonical_prob', 'text.material_in_title_prob', 'text.description_prob',
           'logs.explore_share', 'logs.explore_in_category', 'logs.cold_explore_share')
_POSITIVE_INTS = ('catalog.num_items', 'catalog.num_brands', 'images.chunk',
                  'queries.num_queries', 'logs.pages_per_day', 'logs.page_size')
_NON_NEGATIVE = ('catalog.brand_zipf', 'catalog.quality_sigma', 'queries.zipf',
                 'logs.engine_quality_weight', 'logs.position_power')


def _get(config: Mapping[str, Any], key: str) -> Any:
  node = config
  for part in key.split('.'):
    if part not in node:
      raise ValueError(f'synthshop config key {key!r} is missing.')
    node = node[part]
  return node


def validate_config(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the key for a missing field or an impossible value."""
  if _get(config, 'size') not in SIZES:
    raise ValueError(f'synthshop config key size={config["size"]!r}: choose from {SIZES}.')
  if not isinstance(_get(config, 'seed'), int) or config['seed'] < 0:
    raise ValueError(f'synthshop config key seed={config["seed"]!r}: must be an int >= 0.')
  for key in _SHARES:
    value = _get(config, key)
    if not 0.0 <= value <= 1.0:
      raise ValueError(f'synthshop config key {key}={value}: must be in [0, 1].')
  for key in _POSITIVE_INTS:
    value = _get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'synthshop config key {key}={value!r}: must be a positive int.')
  for key in _NON_NEGATIVE:
    value = _get(config, key)
    if value < 0:
      raise ValueError(f'synthshop config key {key}={value}: must be >= 0.')
  size = _get(config, 'images.size')
  if not isinstance(size, int) or not 8 <= size <= 224:
    raise ValueError(f'synthshop config key images.size={size!r}: must be an int in [8, 224].')
  days = _get(config, 'logs.num_days')
  if not isinstance(days, int) or days < 2:
    raise ValueError(f'synthshop config key logs.num_days={days!r}: need >= 2 (train + eval).')
  vocab.brand_names(_get(config, 'catalog.num_brands'))  # raises naming the key if too many
  weights = _get(config, 'queries.type_weights')
  for name in text_lib.QUERY_TYPES:
    if _get(weights, name) < 0:
      raise ValueError(f'synthshop config key queries.type_weights.{name}: must be >= 0.')
  unknown = set(weights) - set(text_lib.QUERY_TYPES)
  if unknown:
    raise ValueError(f'synthshop config key queries.type_weights: unknown query types '
                     f'{sorted(unknown)}; known: {list(text_lib.QUERY_TYPES)}.')
  if sum(weights[name] for name in weights) <= 0:
    raise ValueError('synthshop config key queries.type_weights: all weights are zero.')
  rel = tuple(_get(config, 'clicks.relevance_weights'))
  if len(rel) != 3:
    raise ValueError(f'synthshop config key clicks.relevance_weights={rel}: need 3 values '
                     '(grade 0, 1, 2).')
  for key in ('clicks.bias', 'clicks.attract_weight', 'clicks.quality_weight',
              'clicks.buy_bias', 'clicks.buy_exact_weight'):
    _get(config, key)
  for key in ('judged.num_queries', 'judged.per_query'):
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'synthshop config key {key}={value!r}: must be an int >= 0.')
  share = _get(config, 'judged.eval_share')
  if not 0.0 < share < 1.0:
    raise ValueError(f'synthshop config key judged.eval_share={share}: must be in (0, 1).')


def to_dict(config: Mapping[str, Any]) -> dict[str, Any]:
  """A plain-dict copy (tuples as lists) that round-trips through JSON unchanged."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True))


def config_json(config: Mapping[str, Any]) -> str:
  """Canonical JSON of the config, written as synthshop.json and hashed for the cache key."""
  return json.dumps(to_dict(config), sort_keys=True, ensure_ascii=False, indent=1) + '\n'


def config_hash(config: Mapping[str, Any]) -> str:
  """A short stable hash of the config (sha256 of its canonical JSON, 16 hex digits)."""
  return hashlib.sha256(config_json(config).encode('utf-8')).hexdigest()[:16]
