"""SynthShop's closed world: categories, colors, patterns, materials, audiences, brands, words.

Everything here is a constant table; the generators index it with integer codes, so an item is a
row of small ints (category, color, pattern, material, audience, brand) until text is written.

The query/title semantic gap lives here: every category has title-side synonyms (the words sellers
stuff into titles: 'gown', 'frock') and query-side synonyms (the words shoppers type: 'sundress',
'dresses'), and the two lists are disjoint except for the canonical name. `QUERY_ONLY_WORDS` is the
set of words that a query may use and no title ever contains (category synonyms and the
audience spellings 'women' / 'men', where titles write 'womens' / 'mens').
"""

import dataclasses
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class Category:
  """One product category.

  name: canonical name, also the `category` attribute value.
  title_words: title-side synonyms (never typed in queries); the canonical name is added to both.
  query_words: query-side synonyms (never written in titles).
  materials: allowed material names (each in MATERIALS).
  audiences: allowed audience names (each in AUDIENCES).
  base_price: typical price; item prices scatter log-normally around it.
  weight: relative share of the catalog.
  """
  name: str
  title_words: tuple[str, ...]
  query_words: tuple[str, ...]
  materials: tuple[str, ...]
  audiences: tuple[str, ...]
  base_price: float
  weight: float


_APPAREL = ('women', 'men', 'kids', 'unisex')

CATEGORIES: tuple[Category, ...] = (
    Category('dress', ('gown', 'frock'), ('dresses', 'sundress'),
             ('cotton', 'linen', 'silk', 'chiffon', 'polyester'), ('women', 'kids'), 45.0, 1.6),
    Category('shirt', ('blouse', 'button-down'), ('shirts', 'buttonup'),
             ('cotton', 'linen', 'silk', 'polyester'), _APPAREL, 30.0, 1.3),
    Category('t-shirt', ('tee', 'crewneck'), ('tshirt', 'tees'),
             ('cotton', 'polyester', 'linen'), _APPAREL, 15.0, 1.5),
    Category('trousers', ('slacks', 'chinos'), ('pants', 'bottoms'),
             ('cotton', 'denim', 'linen', 'wool', 'polyester'), _APPAREL, 40.0, 1.2),
    Category('skirt', ('a-line', 'midi'), ('skirts', 'miniskirt'),
             ('cotton', 'denim', 'silk', 'chiffon', 'wool'), ('women', 'kids'), 28.0, 0.9),
    Category('bag', ('handbag', 'tote', 'satchel'), ('bags', 'purse'),
             ('leather', 'canvas', 'suede', 'polyester'), ('women', 'men', 'unisex'), 60.0, 1.1),
    Category('shoes', ('sneakers', 'footwear'), ('shoe', 'kicks'),
             ('leather', 'suede', 'canvas'), _APPAREL, 70.0, 1.2),
    Category('hat', ('cap', 'beanie'), ('hats', 'headwear'),
             ('wool', 'cotton', 'straw', 'knit'), _APPAREL, 18.0, 0.7),
    Category('jacket', ('coat', 'outerwear'), ('jackets', 'parka'),
             ('denim', 'leather', 'wool', 'polyester', 'suede'), _APPAREL, 90.0, 1.0),
    Category('scarf', ('shawl', 'wrap'), ('scarves', 'muffler'),
             ('silk', 'wool', 'cotton', 'knit'), ('women', 'men', 'unisex'), 20.0, 0.6),
    Category('sofa', ('couch', 'loveseat'), ('sofas', 'settee'),
             ('leather', 'velvet', 'linen', 'suede'), ('unisex',), 450.0, 0.5),
    Category('mug', ('cup', 'tumbler'), ('mugs', 'teacup'),
             ('ceramic', 'porcelain', 'glass', 'enamel'), ('unisex',), 12.0, 0.8),
)
CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)

# RGB of each color; a rendered item's dominant pixels are this color.
COLORS: dict[str, tuple[int, int, int]] = {
    'white': (242, 242, 238), 'black': (22, 22, 26), 'red': (200, 30, 35),
    'blue': (40, 80, 200), 'green': (40, 150, 60), 'yellow': (235, 205, 40),
    'pink': (240, 140, 180), 'grey': (128, 128, 132), 'brown': (120, 70, 35),
    'beige': (215, 195, 150), 'navy': (20, 30, 90), 'purple': (120, 50, 150),
}
COLOR_NAMES = tuple(COLORS)
COLOR_RGB = np.array(list(COLORS.values()), np.float32)  # [num_colors, 3]

PATTERN_NAMES = ('plain', 'stripes', 'dots', 'floral', 'checks')
# Share of items per pattern: plain goods dominate real catalogs.
PATTERN_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)

MATERIAL_NAMES = tuple(sorted({m for c in CATEGORIES for m in c.materials}))
AUDIENCE_NAMES = ('women', 'men', 'kids', 'unisex')
# Title spelling of each audience; unisex home goods get no audience word.
AUDIENCE_TITLE_WORDS = {'women': 'womens', 'men': 'mens', 'kids': 'kids', 'unisex': 'unisex'}
# Shoppers type 'women', sellers write 'womens': another small query/title gap.
AUDIENCE_QUERY_WORDS = {'women': 'women', 'men': 'men', 'kids': 'kids', 'unisex': 'unisex'}

CONDITION_NAMES = ('new', 'like new', 'used')
# Numeric context value of each condition (the model sees a float, not the label).
CONDITION_VALUES = np.array([1.0, 0.7, 0.4], np.float32)
CONDITION_WEIGHTS = (0.8, 0.12, 0.08)

# Marketplace title filler: the keyword stuffing real sellers add.
FILLER_WORDS = (
    'new', '2024', 'hot sale', 'free shipping', 'premium', 'fashion', 'trendy', 'original',
    'best seller', 'high quality', 'official', 'limited edition', 'authentic', 'clearance',
    'genuine', 'deal', 'gift', 'luxury', 'casual', 'classic', 'top rated', 'fast delivery',
    'discount', 'brand new', 'wholesale', 'stylish',
)

_BRAND_HEADS = ('aur', 'bel', 'cor', 'dal', 'ela', 'fen', 'gal', 'hal', 'ivo', 'jun', 'kel',
                'lum', 'mor', 'nov', 'orl', 'pax', 'qui', 'ros', 'sol', 'tav', 'ulm', 'ver',
                'wyn', 'xan', 'yor', 'zel')
_BRAND_MIDS = ('', 'an', 'el', 'ir', 'ob', 'um', 'ad', 'es')
_BRAND_TAILS = ('ora', 'ina', 'ex', 'ano', 'ique', 'ia', 'on', 'eta', 'ux', 'ada', 'is',
                'ello', 'ari', 'oni', 'umi', 'eon')
MAX_BRANDS = len(_BRAND_HEADS) * len(_BRAND_MIDS) * len(_BRAND_TAILS)


def brand_names(num_brands: int) -> list[str]:
  """`num_brands` distinct brand names, most popular first (brand index = popularity rank).

  Names are spelled from fixed syllables in a fixed interleaved order, so brand i is the same
  word for every catalog size; none of them is a color, pattern, material or category word.
  """
  if not 1 <= num_brands <= MAX_BRANDS:
    raise ValueError(f'synthshop config key catalog.num_brands={num_brands}: must be in '
                     f'[1, {MAX_BRANDS}].')
  names = []
  for i in range(num_brands):
    head = _BRAND_HEADS[i % len(_BRAND_HEADS)]
    tail = _BRAND_TAILS[(i // len(_BRAND_HEADS)) % len(_BRAND_TAILS)]
    mid = _BRAND_MIDS[i // (len(_BRAND_HEADS) * len(_BRAND_TAILS))]
    names.append(head + mid + tail)
  return names


def tokenize(text: str) -> list[str]:
  """Lower-cased word tokens: letters, digits and inner hyphens ('t-shirt' stays one token)."""
  return re.findall(r'[a-z0-9]+(?:-[a-z0-9]+)*', text.lower())


def _title_vocabulary() -> set[str]:
  """Every token a title can contain (brands excluded: they are checked separately)."""
  words = set()
  for c in CATEGORIES:
    for w in (c.name,) + c.title_words:
      words.update(tokenize(w))
  for group in (COLOR_NAMES, PATTERN_NAMES, MATERIAL_NAMES, FILLER_WORDS,
                tuple(AUDIENCE_TITLE_WORDS.values())):
    for w in group:
      words.update(tokenize(w))
  return words


TITLE_VOCABULARY = frozenset(_title_vocabulary())
QUERY_ONLY_WORDS = frozenset({w for c in CATEGORIES for w in c.query_words}
                             | set(AUDIENCE_QUERY_WORDS.values()) - _title_vocabulary())

# The gap must be real: a query-side synonym in a title would let lexical matching bridge it.
assert not QUERY_ONLY_WORDS & TITLE_VOCABULARY, QUERY_ONLY_WORDS & TITLE_VOCABULARY
assert not set(brand_names(MAX_BRANDS)) & (TITLE_VOCABULARY | QUERY_ONLY_WORDS)
