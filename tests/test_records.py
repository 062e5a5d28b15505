"""BYOD records: the fixture loads with the right values; bad input names file, line, field."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from mmret.data import evalset
from mmret.data import records

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'


@pytest.fixture(scope='module')
def dataset():
  return records.load_dataset(FIXTURE)


def test_fixture_values(dataset):
  assert [it.item_id for it in dataset.items] == ['a1', 'a2', 'a3', 'a4', 'a5', 'a6']
  a1, a2, a3, a4, a5, a6 = dataset.items
  assert a1.title == 'Sommerkleid weiß' and a3.title == '白色连衣裙 👗' and a6.title == ''
  assert a2.description == '' and a3.description == ''  # empty and absent read the same
  assert a1.image == str((FIXTURE / 'images' / 'a1.png').resolve())
  assert a4.image is None and a6.image is None
  assert a2.context == {'price': 19.5, 'rating': None} and a5.context == {}
  assert a5.category is None and a5.attributes == {}
  assert a3.title_omits == ('color',)
  assert dataset.context_names == ('price', 'rating')
  assert len(dataset.interactions) == 16
  x = dataset.interactions[3]  # click 1 / purchase 0 read as booleans
  assert (x.click, x.purchase, x.engaged, x.relevance, x.page_id) == (True, False, None, None,
                                                                      'p1')
  assert dataset.queries['白色连衣裙'].attributes == {'category': 'dress', 'color': 'white'}


def test_split_rule_and_positives(dataset, tmp_path):
  assert dataset.splits() == ['train'] * 9 + ['eval'] * 7  # day 2 is the last day
  assert [dataset.positive(x) for x in dataset.interactions[:5]] == [True, False, True, True, False]
  d = records.Dataset(root=tmp_path, items=dataset.items, queries={}, context_names=(),
                      interactions=[records.Interaction('q', 'a1', split='eval', day=0),
                                    records.Interaction('q', 'a1', day=1),
                                    records.Interaction('q', 'a1', day=0),
                                    records.Interaction('q', 'a1')])
  assert d.splits() == ['eval', 'eval', 'train', 'train']
  assert records.Interaction('q', 'a1').positive(1.0)  # no label at all: a positive pair
  assert not records.Interaction('q', 'a1', engaged=False).positive(1.0)


def test_interaction_columns(dataset, tmp_path):
  """Dataset.columns: the log as arrays, equal to the per-object methods it replaces in hot
  paths, rebuilt when the interaction list is replaced."""
  cols = dataset.columns()
  xs = dataset.interactions
  assert cols.queries == list(dict.fromkeys(x.query for x in xs))
  assert [cols.queries[q] for q in cols.query.tolist()] == [x.query for x in xs]
  index = dataset.item_index()
  assert cols.item.tolist() == [index[x.item_id] for x in xs]
  assert cols.is_eval.tolist() == [s == 'eval' for s in dataset.splits()]
  assert cols.positive.tolist() == [dataset.positive(x) for x in xs]
  keys = dataset.page_keys()  # same page <=> same page index
  assert all((keys[a] == keys[b]) == (cols.page[a] == cols.page[b])
             for a in range(len(xs)) for b in range(len(xs)))
  assert dataset.columns() is cols  # kept
  I = records.Interaction
  d = records.Dataset(root=tmp_path, items=dataset.items, queries={}, context_names=(),
                      interactions=[I('q', 'a2', relevance=0.5, split='train'),
                                    I('r', 'a1', click=True, relevance=2.0, day=3),
                                    I('q', 'a3', page_id='p', day=1)])
  c = d.columns()
  assert c.queries == ['q', 'r'] and c.query.tolist() == [0, 1, 0]
  assert c.item.tolist() == [1, 0, 2] and c.page.tolist() == [0, 1, 2]
  assert c.is_eval.tolist() == [False, True, False]  # day 3 is the last day
  assert c.positive.tolist() == [False, True, True]  # 0.5 < threshold 1: judged irrelevant
  assert c.judged_irrelevant.tolist() == [True, False, False]
  np.testing.assert_array_equal(c.relevance, [0.5, 2.0, np.nan])
  d.interactions = d.interactions[:2]
  assert d.columns().query.tolist() == [0, 1]  # a new list: rebuilt
  with pytest.raises(ValueError, match="split 'dev'"):
    evalset.build_eval_set(d, split='dev')


def test_eval_set(dataset):
  es = evalset.build_eval_set(dataset)
  # sneakers was searched on day 2 but nothing was clicked: no target, not an eval query.
  assert es.queries == ['white dress', 'striped dress', 'jacket 🧥']
  assert [t.tolist() for t in es.targets] == [[0, 2], [1], [4]]  # a3 counts via its purchase
  assert [t.tolist() for t in es.image_only_targets] == [[2], [1], []]
  assert es.query_counts.tolist() == [2, 1, 1]                   # pages p4, p5 | p6 | p8
  assert es.query_attributes[2] == {}
  grades = es.grade(np.array([0, 1, 2]), np.array([[0, 1, 2, 3, 4, 5]] * 3))
  assert grades.dtype == np.int8
  np.testing.assert_array_equal(grades, [
      [2, 1, 2, 0, -1, -1],   # attributes; a5/a6 have none and were never judged
      [1, 2, 2, 0, -1, -1],
      [-1, -1, -1, -1, 2, -1]])  # no query attributes: the logged label (day 1) for a5


def _write_dataset(root, items=None, interactions=None):
  root.mkdir(exist_ok=True)
  items = items or [{'item_id': 'x1', 'title': 'red dress'}]
  interactions = interactions or [{'query': 'dress', 'item_id': 'x1', 'click': True}]
  for name, rows in (('items.jsonl', items), ('interactions.jsonl', interactions)):
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    (root / name).write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return root


def test_minimal_dataset_loads(tmp_path):
  d = records.load_dataset(_write_dataset(tmp_path / 'd'))
  assert d.items[0] == records.Item('x1', 'red dress')
  assert d.context_names == () and d.queries == {}


def test_malformed_json_line(tmp_path):
  root = _write_dataset(tmp_path / 'd', interactions=[
      {'query': 'dress', 'item_id': 'x1'}, '{"query": "dress", "item_id": "x1"'])
  with pytest.raises(records.DataError, match=r'interactions\.jsonl:2: malformed JSON') as e:
    records.load_dataset(root)
  assert e.value.line == 2


def test_missing_required_field(tmp_path):
  root = _write_dataset(tmp_path / 'd', items=[{'item_id': 'x1', 'title': 'a'},
                                               {'item_id': 'x2', 'description': 'no title'}])
  with pytest.raises(records.DataError,
                     match=r"items\.jsonl:2: field 'title': missing required field"):
    records.load_dataset(root)


def test_unknown_item_in_interaction(tmp_path):
  root = _write_dataset(tmp_path / 'd', interactions=[{'query': 'q', 'item_id': 'x1'},
                                                      {'query': 'q', 'item_id': 'nope'}])
  with pytest.raises(records.DataError,
                     match=r"interactions\.jsonl:2: field 'item_id': unknown item_id 'nope'"):
    records.load_dataset(root)


def test_lines_the_fast_parser_rejects(tmp_path):
  """orjson reads strict JSON; blank lines, non-standard JSON (NaN) and broken lines go through
  the json module as before: same values, same errors with line numbers and fields."""
  rows = ['{"query": "q", "item_id": "x1", "click": true}', '', '   ',
          '{"query": "q", "item_id": "x1", "position": 7}',
          '{"query": "q", "item_id": "x1", "click": 1, "day": 3}']
  d = records.load_dataset(_write_dataset(tmp_path / 'd', interactions=rows))
  assert [(x.click, x.position, x.day) for x in d.interactions] == [(True, None, None),
                                                                    (None, 7, None),
                                                                    (True, None, 3)]
  bad = {'{"query": "q", "item_id": "x1", "relevance": NaN}':
             r"field 'relevance': expected a finite grade",
         '{"query": "q", "item_id": "x1",}':
             r'malformed JSON: Expecting property name .*\(column 32\)',
         # Beyond 64 bits orjson reads a float: no integer field takes it (json read an int).
         '{"query": "q", "item_id": "x1", "position": %d}' % 2**70:
             r"field 'position': expected an integer, got 1\.18",
         '[1, 2]': 'expected a JSON object per line'}
  for k, (line, message) in enumerate(bad.items()):
    root = _write_dataset(tmp_path / f'bad{k}', interactions=rows + [line])
    with pytest.raises(records.DataError, match=r'interactions\.jsonl:6: ' + message):
      records.load_dataset(root)


def test_unreadable_image(tmp_path):
  root = _write_dataset(tmp_path / 'd', items=[
      {'item_id': 'x1', 'title': 'ok', 'image': 'a1.png'},
      {'item_id': 'x2', 'title': 'broken', 'image': 'bad.png'}])
  shutil.copy(FIXTURE / 'images' / 'a1.png', root / 'a1.png')
  (root / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not a png')
  with pytest.raises(records.DataError,
                     match=r"items\.jsonl:2: field 'image': unreadable image .*bad\.png"):
    records.load_dataset(root)
  assert records.load_dataset(root, check_images=False).items[1].image.endswith('bad.png')


def test_wrong_typed_context_value(tmp_path):
  root = _write_dataset(tmp_path / 'd', items=[
      {'item_id': 'x1', 'title': 'a', 'context': {'price': 3}},
      {'item_id': 'x2', 'title': 'b', 'context': {'price': '12.99'}}])
  with pytest.raises(records.DataError,
                     match=r"items\.jsonl:2: field 'context\.price': expected a finite number"):
    records.load_dataset(root)


def test_unknown_field_and_bad_flag(tmp_path):
  root = _write_dataset(tmp_path / 'd', items=[{'item_id': 'x1', 'title': 'a', 'titel': 'b'}])
  with pytest.raises(records.DataError, match=r"items\.jsonl:1: field 'titel': unknown field"):
    records.load_dataset(root)
  root = _write_dataset(tmp_path / 'e', interactions=[{'query': 'q', 'item_id': 'x1',
                                                       'click': 'yes'}])
  with pytest.raises(records.DataError, match=r"interactions\.jsonl:1: field 'click'"):
    records.load_dataset(root)


def test_loader_shares_repeated_strings(tmp_path):
  """2M items and 14M interactions (SynthShop `large`) fit in memory because the loader holds
  each repeated string once: categories, attribute names and values, context names, queries,
  page ids and grades are one object per distinct value; items and interactions are slotted."""
  shutil.copytree(FIXTURE, tmp_path / 'd')
  with open(tmp_path / 'd' / 'items.jsonl', 'a') as f:  # an image path that needs normalising
    f.write(json.dumps({'item_id': 'a7', 'title': 't', 'image': 'images/../images/a1.png'}) + '\n')
  d = records.load_dataset(tmp_path / 'd')
  a1, a2, a3 = d.items[:3]
  assert a1.category is a2.category is a3.category == 'dress'
  assert a1.attributes['color'] is a3.attributes['color'] == 'white'
  key = lambda item, name: next(k for k in item.attributes if k == name)
  assert key(a1, 'category') is key(a2, 'category')
  assert next(iter(a1.context)) is next(iter(a2.context)) == 'price'
  assert d.items[6].image == a1.image == str((tmp_path / 'd' / 'images' / 'a1.png').resolve())
  # The log is columns (~50 bytes a row), its Interactions built on access share the strings.
  assert isinstance(d.interactions, records.InteractionLog)
  assert sum(a.nbytes for a in d.interactions.arrays.values()) == 53 * len(d.interactions)
  queries, pages = {}, {}
  for x in d.interactions:
    assert queries.setdefault(x.query, x.query) is x.query
    assert x.page_id is None or pages.setdefault(x.page_id, x.page_id) is x.page_id
    assert x.item_id is d.items[d.item_index()[x.item_id]].item_id
  assert not hasattr(a1, '__dict__') and not hasattr(d.interactions[0], '__dict__')


def test_log_columns_equal_object_columns(tmp_path):
  """Dataset.columns of a loaded InteractionLog (vectorised) equals the columns built from the
  same Interactions as objects (the reference rules: splits, positive, page_keys)."""
  rows = [{'query': 'a', 'item_id': 'x1', 'click': True, 'day': 5},
          {'query': 'b', 'item_id': 'x2', 'day': 2, 'relevance': 0.5},        # judged irrelevant
          {'query': 'a', 'item_id': 'x2', 'engaged': False, 'page_id': 'p'},  # no day: train
          {'query': 'b', 'item_id': 'x1', 'purchase': 1, 'day': 5, 'split': 'train'},
          {'query': 'c', 'item_id': 'x1', 'relevance': 2, 'click': False},    # graded, no click
          {'query': 'a', 'item_id': 'x1', 'day': 5},                          # same page as row 0
          {'query': 'a', 'item_id': 'x2', 'page_id': 'p', 'position': 3, 'day': 1},
          {'query': 'b', 'item_id': 'x2', 'relevance': 1.1, 'split': 'eval'}]
  items = [{'item_id': 'x1', 'title': 'a'}, {'item_id': 'x2', 'title': 'b'}]
  for k, threshold in enumerate((1.0, 2.0)):
    scale = records.RelevanceScale(threshold=threshold)
    d = records.load_dataset(_write_dataset(tmp_path / f'd{k}', items=items, interactions=rows),
                             relevance=scale)
    as_objects = records.Dataset(root=d.root, items=d.items, interactions=list(d.interactions),
                                 queries={}, context_names=(), relevance=scale)
    assert d.interactions == as_objects.interactions and len(d.interactions) == 8
    assert d.interactions[-1] == records.Interaction('b', 'x2', relevance=1.1, split='eval')
    assert d.interactions[1:3] == as_objects.interactions[1:3]
    assert d.splits() == as_objects.splits()
    log, ref = d.columns(), as_objects.columns()
    assert log.queries == ref.queries == ['a', 'b', 'c']
    for field in ('query', 'item', 'page', 'is_eval', 'positive', 'judged_irrelevant',
                  'relevance', 'position', 'engagement'):
      np.testing.assert_array_equal(getattr(log, field), getattr(ref, field), err_msg=field)
      assert getattr(log, field).dtype == getattr(ref, field).dtype, field
  assert ref.page.tolist() == [0, 1, 2, 3, 4, 0, 2, 5]
  assert ref.positive.tolist() == [True, False, False, True, False, True, True, False]
  assert ref.engagement.tolist() == [1, -1, 0, 1, 0, -1, -1, -1]
  assert ref.position.tolist() == [-1] * 6 + [3, -1]
  with pytest.raises(records.DataError, match=r"interactions\.jsonl:1: field 'day': .* range"):
    records.load_dataset(_write_dataset(tmp_path / 'big', items=items, interactions=[
        {'query': 'a', 'item_id': 'x1', 'day': 2**63}]))
