"""Tests of SynthShop, the simulated marketplace: the properties the evaluation relies on.

Statistical properties are checked on files written to disk and recomputed here independently
(relevance.grade on the JSON attributes), on a catalog a little larger than 'tiny'.
"""

import collections
import json
import pathlib
import types

import numpy as np
import pytest
from PIL import Image

from mmret.data import relevance
from mmret.data import synthshop
from mmret.data.synthshop import catalog as catalog_lib
from mmret.data.synthshop import engine, render, vocab
from mmret.data.synthshop import text as text_lib


def _stats_config(seed=0):
  c = synthshop.default_config('tiny')
  c.seed = seed
  c.catalog.num_items = 800
  c.queries.num_queries = 60
  c.logs.pages_per_day = 150
  return c


def _read(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = synthshop.generate(_stats_config(), tmp_path_factory.mktemp('shop') / 'stats')
  return types.SimpleNamespace(root=root, items=_read(root / 'items.jsonl'),
                               queries=_read(root / 'queries.jsonl'),
                               logs=_read(root / 'interactions.jsonl'))


def test_default_config_sizes_and_errors():
  assert synthshop.default_config('tiny').catalog.num_items == 200
  assert synthshop.default_config('small').catalog.num_items == 3000
  assert synthshop.default_config('small').queries.num_queries == 300
  assert synthshop.default_config('large').catalog.num_items >= 1_000_000
  medium = synthshop.default_config('medium')
  assert (medium.catalog.num_items, medium.queries.num_queries) == (200_000, 3000)
  assert (medium.logs.num_days, medium.logs.pages_per_day) == (6, 10_000)
  # The sizes that existed before 'medium' keep their configs (and so their cache hashes).
  assert synthshop.default_config('small').logs.pages_per_day == 1000
  assert synthshop.default_config('large').logs.pages_per_day == 100_000
  with pytest.raises(ValueError, match="'huge'"):
    synthshop.default_config('huge')
  for key, value in [('images.size', 300), ('catalog.cold_share', 1.5),
                     ('logs.num_days', 1), ('catalog.num_items', 0)]:
    c = synthshop.default_config('tiny')
    section, leaf = key.split('.')
    c[section][leaf] = value
    with pytest.raises(ValueError, match=key.replace('.', r'\.')):
      synthshop.validate_config(c)
  c = synthshop.default_config('tiny')
  del c.logs['page_size']
  with pytest.raises(ValueError, match=r'logs\.page_size'):
    synthshop.validate_config(c)


def test_record_format(data):
  item = data.items[0]
  assert set(item) - {'image'} == {'item_id', 'title', 'description', 'category', 'context',
                                   'attributes', 'title_omits'}
  assert set(item['context']) == {'price', 'rating', 'condition'}
  assert set(item['attributes']) == {'category', 'color', 'pattern', 'material', 'audience',
                                     'brand'}
  with_image = [it for it in data.items if 'image' in it]
  assert 0 < len(data.items) - len(with_image) < 0.15 * len(data.items)  # missing modality
  img = Image.open(data.root / with_image[0]['image'])
  assert img.size == (32, 32) and img.mode == 'RGB'
  assert len(list((data.root / 'images').iterdir())) == len(with_image)
  assert len(data.queries) == 60
  assert {q['query'] for q in data.queries} >= {x['query'] for x in data.logs}
  line = data.logs[0]
  assert set(line) == {'query', 'item_id', 'page_id', 'position', 'click', 'purchase',
                       'engaged', 'relevance', 'day'}
  # The hand-formatted interaction lines are exactly what json.dumps would write.
  first = (data.root / 'interactions.jsonl').read_text(encoding='utf-8').splitlines()[0]
  assert first == json.dumps(line, sort_keys=True, ensure_ascii=False)


def test_logged_labels_are_consistent(data):
  items = {it['item_id']: it for it in data.items}
  queries = {q['query']: q['attributes'] for q in data.queries}
  for x in data.logs:
    assert x['engaged'] == (x['click'] or x['purchase'])
    assert x['click'] or not x['purchase']          # purchases are a subset of clicks
    assert x['relevance'] == relevance.grade(queries[x['query']],
                                             items[x['item_id']]['attributes'])
  # Relevance drives clicks: exact matches are clicked far more often than irrelevant items.
  ctr = {g: np.mean([x['click'] for x in data.logs if x['relevance'] == g]) for g in (0, 2)}
  assert ctr[2] > 3 * ctr[0]
  pages = collections.defaultdict(list)
  for x in data.logs:
    pages[x['page_id']].append(x['item_id'])
  assert all(len(p) == len(set(p)) for p in pages.values())  # no item twice on a page


def test_image_carries_attributes_the_title_lacks(data):
  pairs = image_only = 0
  for q in data.queries:
    named = [k for k in ('color', 'pattern') if k in q['attributes']]
    if not named:
      continue
    for it in data.items:
      if relevance.grade(q['attributes'], it['attributes']) == 2:
        pairs += 1
        image_only += any(k in it['title_omits'] for k in named)
  assert pairs > 100
  assert image_only / pairs >= 0.3
  # An omitted attribute never leaks into the title or the description.
  for it in data.items:
    words = set(vocab.tokenize(it['title'] + ' ' + it['description']))
    for k in it['title_omits']:
      assert it['attributes'][k] not in words


def test_clicks_are_heavy_tailed(data):
  clicks = collections.Counter(x['item_id'] for x in data.logs if x['click'])
  counts = sorted(clicks.values(), reverse=True)
  top = len(data.items) // 10
  assert sum(counts) > 300
  assert sum(counts[:top]) >= 0.5 * sum(counts)


def test_lexical_match_misses_image_only_items(data):
  index = engine.LexicalIndex([it['title'] for it in data.items])
  hits = {'visible': 0, 'omitted': 0}
  totals = {'visible': 0, 'omitted': 0}
  for q in data.queries:
    a = q['attributes']
    if 'color' not in a:
      continue
    matches_color = set(index.postings(a['color']).tolist())
    top = set(index.search(q['query'], 10).tolist())
    for i, it in enumerate(data.items):
      if relevance.grade(a, it['attributes']) != 2:
        continue
      kind = 'omitted' if 'color' in it['title_omits'] else 'visible'
      assert (i in matches_color) == (kind == 'visible')   # never a lexical color match
      totals[kind] += 1
      hits[kind] += i in top
  assert min(totals.values()) > 30
  recall = {k: hits[k] / totals[k] for k in hits}
  assert recall['visible'] > 2.5 * recall['omitted'], recall


def test_query_side_words_titles_never_use(data):
  title_words = {w for it in data.items for w in vocab.tokenize(it['title'])}
  query_words = {w for q in data.queries for w in vocab.tokenize(q['query'])}
  query_only = query_words - title_words
  assert query_only and query_only <= vocab.QUERY_ONLY_WORDS
  assert not title_words & vocab.QUERY_ONLY_WORDS
  # e.g. a dress is a 'gown'/'frock' in titles but a 'sundress'/'dresses' in queries.
  assert {'gown', 'frock'} <= vocab.TITLE_VOCABULARY
  assert not {'gown', 'frock'} & vocab.QUERY_ONLY_WORDS


def test_cold_items_only_on_last_day():
  world = synthshop.build(_stats_config())
  imp = world.simulator.all_days()
  last = world.config.logs.num_days - 1
  cold = world.catalog.cold
  assert cold.sum() > 20
  assert not cold[imp.item[imp.day < last]].any()
  assert cold[imp.item[imp.day == last]].sum() > 50
  np.testing.assert_array_equal(np.unique(imp.day), np.arange(last + 1))


def test_each_category_has_a_distinct_silhouette():
  axis = (np.arange(32) + 0.5) / 32 * 2 - 1
  v, u = np.meshgrid(axis / 0.85, axis / 0.85, indexing='ij')
  masks = {n: f(u, v) for n, f in render.SILHOUETTES.items()}
  assert list(masks) == list(vocab.CATEGORY_NAMES)
  for name, m in masks.items():
    assert 0.1 < m.mean() < 0.75, name
  names = list(masks)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
      assert iou < 0.8, (a, b, iou)


def test_rendered_images_show_color_and_vary():
  c = synthshop.default_config('tiny')
  world = synthshop.build(c)
  cat = world.catalog
  place = render.sample_placements(c, len(cat))
  plain = np.flatnonzero(cat.pattern == vocab.PATTERN_NAMES.index('plain'))[:40]
  px = render.render_items(c, cat, plain, place)
  assert px.shape == (len(plain), 32, 32, 3) and px.dtype == np.uint8
  rgb = vocab.COLOR_RGB[cat.color[plain]][:, None, None, :]
  near = np.linalg.norm(px.astype(np.float32) - rgb, axis=-1) < 45
  assert (near.mean(axis=(1, 2)) > 0.08).all()        # the item's color is clearly visible
  # Same category and color still give different pictures (position, scale, background).
  assert len({p.tobytes() for p in px}) == len(plain)


def _files(root: pathlib.Path):
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  a = _files(synthshop.generate(synthshop.default_config('tiny'), tmp_path / 'a'))
  b = _files(synthshop.generate(synthshop.default_config('tiny'), tmp_path / 'b'))
  assert a.keys() == b.keys() and len(a) > 100
  for name in a:
    assert a[name] == b[name], name
  other = synthshop.default_config('tiny')
  other.seed = 1
  c = _files(synthshop.generate(other, tmp_path / 'c'))
  for name in ('items.jsonl', 'interactions.jsonl', 'queries.jsonl', 'images/i000000.png'):
    if name in c and name in a:
      assert a[name] != c[name], name


def test_generate_skips_a_complete_dataset(tmp_path):
  config = synthshop.default_config('tiny')
  root = synthshop.load_or_generate(config, tmp_path)
  assert root.parent == tmp_path and root.name.startswith('synthshop-tiny-')
  stamp = (root / 'interactions.jsonl').stat().st_mtime_ns
  assert synthshop.load_or_generate(config, tmp_path) == root
  assert (root / 'interactions.jsonl').stat().st_mtime_ns == stamp
  config.logs.pages_per_day = 20                       # another config: another directory
  assert synthshop.load_or_generate(config, tmp_path) != root
  regenerated = synthshop.generate(config, root)       # same directory, new config: rewritten
  assert len(_read(regenerated / 'interactions.jsonl')) <= 20 * 3 * 10
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('x')
  with pytest.raises(ValueError, match='refusing'):
    synthshop.generate(config, tmp_path / 'other')


def test_bm25_matches_an_independent_computation():
  titles = ['White Gown Dress', 'Red Dress', 'White Mug Cup', 'Blue Sofa', 'Dress dress white']
  index = engine.LexicalIndex(titles)
  docs = [vocab.tokenize(t) for t in titles]
  avg = sum(map(len, docs)) / len(docs)
  def bm25(query, doc, k1=1.2, b=0.75):
    total = 0.0
    for term in set(vocab.tokenize(query)):
      df = sum(term in d for d in docs)
      tf = doc.count(term)
      if tf:
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg))
    return total
  items, scores = index.score('white dress')
  got = dict(zip(items.tolist(), scores.tolist()))
  expected = {i: bm25('white dress', d) for i, d in enumerate(docs) if bm25('white dress', d)}
  assert got.keys() == expected.keys() == {0, 1, 2, 4}
  for i, value in expected.items():
    assert got[i] == pytest.approx(value, rel=1e-5)
  assert expected[0] == pytest.approx(1.0140, abs=1e-3)   # by hand: 2 x 0.539 x 2.2 / 2.338
  np.testing.assert_array_equal(index.search('white dress', 2), [4, 0])
  allowed = np.array([False, True, True, True, True])
  np.testing.assert_array_equal(index.search('white dress', 9, allowed=allowed), [4, 1, 2])
  assert index.search('sundress', 5).size == 0          # a query-only word matches no title


def test_query_strings_match_the_per_row_rule():
  rng = np.random.default_rng(0)
  config = synthshop.default_config('small')
  cat = catalog_lib.sample_catalog(config)
  cols = cat.codes()[rng.integers(0, len(cat), 500)]
  attrs = np.where(rng.random(cols.shape) < 0.5, cols, -1).astype(np.int32)
  attrs[:, 0] = cols[:, 0]
  canonical, syn = rng.random(500) < 0.5, rng.integers(0, 1 << 30, 500)
  got = text_lib._query_strings(attrs, canonical, syn, cat.brands)
  want = [text_lib._query_string(a, c, s, cat.brands) for a, c, s in zip(attrs, canonical, syn)]
  assert got == want and len(set(got)) > 50
