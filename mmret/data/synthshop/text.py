"""Marketplace text: long keyword-stuffed titles, short descriptions and short broad queries.

Titles are written by sellers: brand, audience, material, color, pattern, one or two title-side
category synonyms and filler ('hot sale', 'free shipping', '2024'). With a configurable
probability a title leaves out the color and/or the pattern; the picture still shows them, and
`title_omits` records which. Queries are written by shoppers: short ('white sundress', 'dresses',
'leather bag', 'women jackets', 'aurora bags'), using query-side synonyms that no title contains
(vocab.QUERY_ONLY_WORDS).
"""

import dataclasses

import numpy as np

from mmret.data.synthshop import catalog as catalog_lib
from mmret.data.synthshop import vocab

# Columns of Queries.attrs, in this order; category is column 0 (relevance.grade_codes).
QUERY_ATTRIBUTES = ('category', 'color', 'pattern', 'material', 'audience', 'brand')
# Query type (a key of config.queries.type_weights) -> attributes named besides the category.
QUERY_TYPES = {'category': (), 'color': ('color',), 'pattern': ('pattern',),
               'material': ('material',), 'color_pattern': ('color', 'pattern'),
               'color_material': ('color', 'material'), 'audience': ('audience',),
               'audience_color': ('audience', 'color'), 'brand': ('brand',)}


@dataclasses.dataclass
class ItemText:
  """titles, descriptions: N strings ('' = no description); omits: N tuples of omitted names."""
  titles: list[str]
  descriptions: list[str]
  omits: list[tuple[str, ...]]


@dataclasses.dataclass
class Queries:
  """Distinct queries, most popular first.

  texts: Q strings.  attrs: int32 [Q, 6] codes per QUERY_ATTRIBUTES, -1 = not named.
  popularity: float64 [Q], Zipf probabilities summing to 1.
  brands: the catalog's brand names (decodes the brand column).
  """
  texts: list[str]
  attrs: np.ndarray
  popularity: np.ndarray

  brands: list[str]

  def attributes(self, q: int) -> dict[str, str]:
    """The attribute dict of query q, e.g. {'category': 'dress', 'color': 'white'}."""
    tables = (vocab.CATEGORY_NAMES, vocab.COLOR_NAMES, vocab.PATTERN_NAMES, vocab.MATERIAL_NAMES,
              vocab.AUDIENCE_NAMES, self.brands)
    return {name: table[code] for name, table, code in
            zip(QUERY_ATTRIBUTES, tables, self.attrs[q]) if code >= 0}


def _cap(word: str) -> str:
  return word[:1].upper() + word[1:]


def item_text(config, cat: catalog_lib.Catalog) -> ItemText:
  """Titles, descriptions and title_omits for every catalog item (a cheap loop over rows)."""
  tc = config.text
  n = len(cat)
  rng = catalog_lib.rng_for(config.seed, catalog_lib.STREAM_TEXT)
  omit_color = rng.random(n) < tc.omit_color_prob
  omit_pattern = rng.random(n) < tc.omit_pattern_prob
  canonical = rng.random(n) < tc.title_canonical_prob
  stuffed = rng.random(n) < 0.5               # a second category synonym (keyword stuffing)
  syn = rng.integers(0, 1 << 30, n)           # which synonym(s); reduced modulo the list length
  with_material = rng.random(n) < tc.material_in_title_prob
  with_description = rng.random(n) < tc.description_prob
  n_pre = rng.integers(0, 3, n)
  n_post = rng.integers(1, 4, n)
  fill = rng.integers(0, len(vocab.FILLER_WORDS), (n, 5))

  titles, descriptions, omits = [], [], []
  for i in range(n):
    c = vocab.CATEGORIES[cat.category[i]]
    material = vocab.MATERIAL_NAMES[cat.material[i]]
    audience = vocab.AUDIENCE_NAMES[cat.audience[i]]
    fillers = list(dict.fromkeys(vocab.FILLER_WORDS[f] for f in fill[i]))  # distinct, in order
    words = fillers[:n_pre[i]] + [cat.brands[cat.brand[i]]]
    if c.name not in ('sofa', 'mug'):          # home goods carry no audience word
      words.append(vocab.AUDIENCE_TITLE_WORDS[audience])
    if with_material[i]:
      words.append(material)
    if not omit_color[i]:
      words.append(vocab.COLOR_NAMES[cat.color[i]])
    if not omit_pattern[i]:
      words.append(vocab.PATTERN_NAMES[cat.pattern[i]])
    k = len(c.title_words)
    first = c.title_words[syn[i] % k]
    second = c.title_words[(syn[i] + 1) % k]
    if canonical[i]:
      words += [c.name, first] if stuffed[i] else [c.name]
    else:
      words += [first, second] if stuffed[i] else [first]
    words += fillers[n_pre[i]:n_pre[i] + n_post[i]]
    titles.append(' '.join(_cap(w) for w in words))
    omits.append(tuple(name for name, o in (('color', omit_color[i]),
                                              ('pattern', omit_pattern[i])) if o))
    if with_description[i]:
      # Never mentions color or pattern: an omitted attribute must stay image-only.
      condition = vocab.CONDITION_NAMES[cat.condition[i]]
      descriptions.append(f'Made of {material}. Condition: {condition}. For {audience}.')
    else:
      descriptions.append('')
  return ItemText(titles=titles, descriptions=descriptions, omits=omits)


def _query_string(attrs: np.ndarray, canonical: bool, syn: int, brands: list[str]) -> str:
  """'[brand] [audience] [color] [pattern] [material] category-word', lower case."""
  c = vocab.CATEGORIES[attrs[0]]
  words = []
  if attrs[5] >= 0:
    words.append(brands[attrs[5]])
  if attrs[4] >= 0:
    words.append(vocab.AUDIENCE_QUERY_WORDS[vocab.AUDIENCE_NAMES[attrs[4]]])
  if attrs[1] >= 0:
    words.append(vocab.COLOR_NAMES[attrs[1]])
  if attrs[2] >= 0:
    words.append(vocab.PATTERN_NAMES[attrs[2]])
  if attrs[3] >= 0:
    words.append(vocab.MATERIAL_NAMES[attrs[3]])
  words.append(c.name if canonical else c.query_words[syn % len(c.query_words)])
  return ' '.join(words)


def _query_strings(attrs: np.ndarray, canonical: np.ndarray, syn: np.ndarray,
                   brands: list[str]) -> list[str]:
  """_query_string of every row of attrs [B, 6] (canonical, syn [B]), column by column."""
  def words(table, col):  # -1 (not named) picks the '' appended last
    return np.asarray([*table, ''], object)[attrs[:, col]]

  audience = [vocab.AUDIENCE_QUERY_WORDS[n] for n in vocab.AUDIENCE_NAMES]
  columns = [words(brands, 5), words(audience, 4), words(vocab.COLOR_NAMES, 1),
             words(vocab.PATTERN_NAMES, 2), words(vocab.MATERIAL_NAMES, 3)]
  cats = [vocab.CATEGORIES[c] for c in attrs[:, 0].tolist()]
  columns.append([c.name if can else c.query_words[s % len(c.query_words)]
                  for c, can, s in zip(cats, canonical.tolist(), syn.tolist())])
  return [' '.join(w for w in ws if w) for ws in zip(*columns)]


def sample_queries(config, cat: catalog_lib.Catalog) -> Queries:
  """Distinct queries built from the attributes of random items (so each has exact matches).

  Raises ValueError naming queries.num_queries if the catalog cannot yield that many.
  """
  qc = config.queries
  num = qc.num_queries
  rng = catalog_lib.rng_for(config.seed, catalog_lib.STREAM_QUERIES)
  types = list(QUERY_TYPES)
  w = np.array([qc.type_weights[t] for t in types], np.float64)
  item_cols = cat.codes()
  seen: dict[str, np.ndarray] = {}
  batch = max(4 * num, 64)
  for _ in range(50):
    items = rng.integers(0, len(cat), batch)
    kind = rng.choice(len(types), size=batch, p=w / w.sum())
    canonical = rng.random(batch) < config.text.query_canonical_prob
    syn = rng.integers(0, 1 << 30, batch)
    rows = np.full((batch, len(QUERY_ATTRIBUTES)), -1, np.int32)
    rows[:, 0] = item_cols[items, 0]
    for t, name in enumerate(types):
      of_type = kind == t
      for attr in QUERY_TYPES[name]:
        col = QUERY_ATTRIBUTES.index(attr)
        rows[of_type, col] = item_cols[items[of_type], col]
    for text, attrs in zip(_query_strings(rows, canonical, syn, cat.brands), rows):
      seen.setdefault(text, attrs)
      if len(seen) == num:
        break
    if len(seen) == num:
      break
  else:
    raise ValueError(f'synthshop config key queries.num_queries={num}: the catalog yields only '
                     f'{len(seen)} distinct queries.')
  texts = list(seen)
  attrs = np.stack([seen[t] for t in texts])
  # Broad queries ('dress') are typed more often than narrow ones ('white floral dress').
  breadth = (attrs[:, 1:] >= 0).sum(1) + rng.normal(0, 0.75, num)
  order = np.argsort(breadth, kind='stable')
  return Queries(texts=[texts[i] for i in order], attrs=attrs[order],
                 popularity=catalog_lib.zipf_probs(num, qc.zipf), brands=cat.brands)
