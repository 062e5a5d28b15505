"""SynthShop: a simulated marketplace, mmret's built-in default dataset.

A seeded generator of a catalog (category, color, pattern, material, audience, brand, price,
rating, condition, latent quality), procedurally rendered pictures, keyword-stuffed titles that
often leave the color/pattern to the picture, short broad shopper queries with their own
synonyms, and days of search logs (a BM25 title engine plus exploration, position-biased clicks
and purchases). The last day is the evaluation day; cold items are listed only then.

  from mmret.data import synthshop
  config = synthshop.default_config('small')          # 'tiny' | 'small' | 'large'
  path = synthshop.load_or_generate(config, '~/.cache/mmret')   # BYOD directory

Modules: config (sizes, validation), vocab (word tables), catalog (item columns), render
(pictures), text (titles, queries), engine (BM25), logs (pages and clicks), writer (files).
"""

from mmret.data.synthshop.config import SIZES, default_config, validate_config
from mmret.data.synthshop.writer import World, build, generate, load_or_generate

__all__ = ['SIZES', 'World', 'build', 'default_config', 'generate', 'load_or_generate',
           'validate_config']
