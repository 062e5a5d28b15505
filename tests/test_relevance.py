"""Tests of mmret.data.relevance: hand-written grades, the vectorised forms and the eval set."""

import pathlib

import numpy as np
import pytest

from mmret.data import evalset
from mmret.data import records
from mmret.data import relevance

WHITE_DRESS = {'category': 'dress', 'color': 'white', 'pattern': 'plain', 'brand': 'aur'}
RED_DRESS = {'category': 'dress', 'color': 'red', 'pattern': 'floral', 'brand': 'bel'}
WHITE_BAG = {'category': 'bag', 'color': 'white', 'pattern': 'plain'}


@pytest.mark.parametrize('query, item, expected', [
    ({'category': 'dress'}, WHITE_DRESS, 2),
    ({'category': 'dress', 'color': 'white'}, WHITE_DRESS, 2),
    ({'category': 'dress', 'color': 'white'}, RED_DRESS, 1),          # same category only
    ({'category': 'dress', 'color': 'white', 'pattern': 'floral'}, WHITE_DRESS, 1),
    ({'category': 'dress', 'color': 'white'}, WHITE_BAG, 0),          # color alone is not enough
    ({'category': 'dress', 'material': 'silk'}, WHITE_DRESS, 1),      # item lacks the attribute
    ({'color': 'white'}, WHITE_BAG, 2),                               # no category named
    ({'color': 'red'}, WHITE_BAG, 0),
    ({'category': 'sofa'}, {}, 0),
])
def test_grade_hand_cases(query, item, expected):
  assert relevance.grade(query, item) == expected


def test_category_relevant():
  assert relevance.category_relevant({'category': 'dress', 'color': 'red'}, WHITE_DRESS)
  assert not relevance.category_relevant({'category': 'bag'}, WHITE_DRESS)
  assert not relevance.category_relevant({'color': 'white'}, WHITE_DRESS)


def test_bad_input_names_the_problem():
  with pytest.raises(ValueError, match='empty'):
    relevance.grade({}, WHITE_DRESS)
  with pytest.raises(TypeError, match="query attribute 'color'"):
    relevance.grade({'category': 'dress', 'color': 3}, WHITE_DRESS)
  with pytest.raises(TypeError, match="item attribute 'price'"):
    relevance.grade({'category': 'dress'}, {'category': 'dress', 'price': 9.5})
  with pytest.raises(TypeError, match='mapping'):
    relevance.category_relevant(['dress'], WHITE_DRESS)


def test_grade_codes_hand_values():
  # Columns: category, color. Query -1 = not named; item -2 = missing.
  queries = np.array([[0, 1], [0, -1], [-1, 1], [-1, -1]])
  items = np.array([[0, 1], [0, 2], [1, 1], [0, -2]])
  got = relevance.grade_codes(queries[:, None, :], items[None, :, :])
  expected = np.array([[2, 1, 0, 1],
                       [2, 2, 0, 2],
                       [2, 0, 2, 0],
                       [-1, -1, -1, -1]], np.int8)
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.int8


def test_attribute_grader_matches_scalar_grade():
  rng = np.random.default_rng(0)
  values = {'category': ['dress', 'bag', 'mug'], 'color': ['white', 'red'],
            'pattern': ['plain', 'dots'], 'material': ['silk', 'leather']}
  def random_attrs(p_keep):
    return {k: v[rng.integers(len(v))] for k, v in values.items()
            if k == 'category' or rng.random() < p_keep}
  queries = [random_attrs(0.4) for _ in range(30)]
  items = [random_attrs(0.9) for _ in range(50)]
  grader = relevance.AttributeGrader(queries, items)
  q_idx = rng.integers(0, 30, 400)
  i_idx = rng.integers(0, 50, 400)
  got = grader.grade(q_idx, i_idx)
  expected = [relevance.grade(queries[q], items[i]) for q, i in zip(q_idx, i_idx)]
  np.testing.assert_array_equal(got, expected)
  cat = grader.category_relevant(q_idx, i_idx)
  np.testing.assert_array_equal(
      cat, [relevance.category_relevant(queries[q], items[i]) for q, i in zip(q_idx, i_idx)])
  # The three grades all occur, so the comparison above is not vacuous.
  assert set(got.tolist()) == {0, 1, 2}


def test_image_only_match():
  assert relevance.image_only_match({'category': 'dress', 'color': 'white'}, WHITE_DRESS,
                                    ('color',))
  assert not relevance.image_only_match({'category': 'dress', 'color': 'white'}, WHITE_DRESS,
                                        ('pattern',))
  assert not relevance.image_only_match({'category': 'dress', 'color': 'red'}, WHITE_DRESS,
                                        ('color',))


def _item(item_id, attrs, omits=()):
  return records.Item(item_id=item_id, title=item_id, attributes=attrs, title_omits=tuple(omits))


def _hit(query, item_id, day, click=False, purchase=False, split=None):
  return records.Interaction(query=query, item_id=item_id, day=day, click=click,
                             purchase=purchase, split=split)


def test_build_eval_set():
  items = [_item('a', WHITE_DRESS, ('color',)), _item('b', RED_DRESS),
           _item('c', WHITE_BAG), _item('d', WHITE_DRESS)]
  queries = {'white dress': records.QueryInfo('white dress', {'category': 'dress',
                                                              'color': 'white'}),
             'bag': records.QueryInfo('bag', {'category': 'bag'})}
  interactions = [
      _hit('white dress', 'a', 0, click=True),        # train day: not a target
      _hit('white dress', 'a', 1, click=True),
      _hit('white dress', 'd', 1, purchase=True),
      _hit('white dress', 'b', 1),                    # shown, not engaged
      _hit('bag', 'b', 1),
      _hit('no attrs', 'c', 1, click=True),
      _hit('white dress', 'c', 0, click=True, split='eval'),  # explicit split wins over day
  ]
  dataset = records.Dataset(root=pathlib.Path('.'), items=items, interactions=interactions,
                            queries=queries, context_names=())
  ev = evalset.build_eval_set(dataset)
  assert ev.queries == ['white dress', 'no attrs']    # 'bag' has no target
  np.testing.assert_array_equal(ev.targets[0], [0, 2, 3])
  np.testing.assert_array_equal(ev.targets[1], [2])
  np.testing.assert_array_equal(ev.image_only_targets[0], [0])  # 'a' omits its white color
  assert ev.image_only_targets[1].size == 0
  # Ground truth over the whole catalog: 'a' and 'd' match exactly, only 'a' hides the color.
  np.testing.assert_array_equal(ev.image_only_relevant[0], [0])
  assert ev.image_only_relevant[1].size == 0
  np.testing.assert_array_equal(ev.query_counts, [2, 1])  # (query, day) pages: days 0 and 1
  grades = ev.grade(np.array([0, 1]), np.array([[0, 1, 2], [0, 1, 2]]))
  np.testing.assert_array_equal(grades, [[2, 1, 0], [-1, -1, -1]])
  np.testing.assert_array_equal(ev.category_relevant(np.array([0]), np.array([[1, 2]])),
                                [[True, False]])


def _random_catalog(seed, num_queries=40, num_items=300):
  """Random queries (some naming nothing) and items (some without attributes, some omitting
  attributes from their titles)."""
  rng = np.random.default_rng(seed)
  values = {'category': ['dress', 'bag', 'mug'], 'color': ['white', 'red', 'blue'],
            'pattern': ['plain', 'dots'], 'material': ['silk', 'leather']}

  def attrs(p_keep, p_category):
    return {k: v[rng.integers(len(v))] for k, v in values.items()
            if rng.random() < (p_category if k == 'category' else p_keep)}
  queries = [attrs(0.4, 0.8) if rng.random() > 0.1 else {} for _ in range(num_queries)]
  items = [attrs(0.9, 0.95) if rng.random() > 0.1 else {} for _ in range(num_items)]
  omits = [tuple(k for k in a if k != 'category' and rng.random() < 0.3) for a in items]
  return rng, queries, items, omits


@pytest.mark.parametrize('seed', [0, 1])
def test_match_counts_and_exact_items_equal_grading_every_pair(seed, monkeypatch):
  """The grouped counts (no Q x N grading) equal counting grade() over every pair; also when
  the codes are too many to pack into one int64 key (the np.unique fallback)."""
  _, queries, items, _ = _random_catalog(seed)
  grader = relevance.AttributeGrader(queries, items)
  every = grader.grade(np.arange(len(queries))[:, None], np.arange(len(items))[None, :])
  assert {0, 1, 2} <= set(every.ravel().tolist())  # not vacuous
  for packed in (True, False):
    if not packed:
      monkeypatch.setattr(relevance, '_KEY_LIMIT', 1.0)
    exact, partial = grader.match_counts()
    np.testing.assert_array_equal(exact, np.where(every == relevance.UNGRADED, 0,
                                                  every == 2).sum(axis=1))
    np.testing.assert_array_equal(partial, (every == 1).sum(axis=1))
    wanted = np.arange(0, len(queries), 2)
    got = grader.exact_items(wanted)
    named = [q for q in wanted.tolist() if queries[q]]
    assert sorted(got) == named
    for q in named:
      np.testing.assert_array_equal(got[q], np.flatnonzero(every[q] == 2))


def test_image_only_relevant_and_ideal_gains_equal_brute_force():
  """build_eval_set's image-only ground truth and EvalSet.ideal_gains (both computed without a
  pass over the catalog per query) equal their definitions applied to every pair, with logged
  labels on items without attributes and on queries that name none."""
  rng, queries, items, omits = _random_catalog(2, num_queries=25, num_items=120)
  names = [f'q{k}' for k in range(len(queries))]
  catalog = [records.Item(f'i{k}', f'item {k}', attributes=a, title_omits=o)
             for k, (a, o) in enumerate(zip(items, omits))]
  interactions = [_hit(q, f'i{rng.integers(len(items))}', 1, click=True) for q in names]
  labelled = [records.Interaction(query=names[rng.integers(len(names))],
                                  item_id=f'i{rng.integers(len(items))}', day=1,
                                  relevance=float(rng.choice([0.0, 1.0, 2.0, 3.0])))
              for _ in range(150)]
  dataset = records.Dataset(
      root=pathlib.Path('.'), items=catalog, interactions=interactions + labelled,
      queries={n: records.QueryInfo(n, a) for n, a in zip(names, queries)}, context_names=())
  ev = evalset.build_eval_set(dataset)
  assert len(ev.queries) == len(names)
  all_items = np.arange(len(items))
  found_image_only = 0
  for q, name in enumerate(ev.queries):
    attrs = queries[names.index(name)]
    expected = [i for i in all_items.tolist() if any(k != 'category' for k in attrs)
                and relevance.grade(attrs, items[i]) == 2
                and relevance.image_only_match(attrs, items[i], omits[i])] if attrs else []
    np.testing.assert_array_equal(ev.image_only_relevant[q], expected, err_msg=name)
    found_image_only += len(expected)
  assert found_image_only > 0
  for k in (5, 50, 500):
    gains = ev.gain(np.arange(len(ev.queries)), np.broadcast_to(all_items, (len(ev.queries),
                                                                           len(items))))
    brute = -np.sort(-gains, axis=1)[:, :min(k, len(items))]
    np.testing.assert_array_equal(ev.ideal_gains(k), brute)
  assert (ev.ideal_gains(50) == 3).any()  # labels above the attribute grades are read too
