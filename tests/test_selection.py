"""Model selection: the validation split (held-out training queries, never eval ones) and the
selector that keeps the best validated parameters."""

import math

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from mmret.data import evalset
from mmret.data import records
from mmret.data import validation
from mmret.train import selection

ITEMS = [records.Item(f'x{i}', f'item {i}') for i in range(3)]


def _dataset():
  I = records.Interaction
  rows = []
  for q in range(400):
    rows.append(I(f'query {q}', 'x0', click=True, split='train'))
    if q % 3 == 0:  # a third of the training queries are also searched on the eval split
      rows.append(I(f'query {q}', 'x1', click=True, split='eval'))
  rows.append(I('never clicked', 'x2', click=False, split='train'))
  return records.Dataset(root=None, items=ITEMS, interactions=rows, queries={},
                         context_names=())


def test_validation_split_never_holds_an_eval_query():
  d = _dataset()
  held_out = validation.validation_queries(d, share=0.5)
  evaluated = {x.query for x, s in zip(d.interactions, d.splits()) if s == 'eval'}
  assert held_out and not set(held_out) & evaluated
  assert 'never clicked' not in held_out  # nothing to validate on
  # About half of the 266 train-only queries; the hash decides, not the order or the seed.
  assert 0.35 * 266 < len(held_out) < 0.65 * 266
  assert held_out == sorted(q for q in (f'query {i}' for i in range(400))
                            if q not in evaluated and validation.query_fraction(q) < 0.5)
  # A query's membership does not depend on the rest of the log.
  small = records.Dataset(root=None, items=ITEMS, interactions=d.interactions[:20], queries={},
                          context_names=())
  assert set(validation.validation_queries(small, 0.5)) <= set(held_out)
  assert validation.validation_queries(d, 0.0) == []
  # The validation set: its targets are the held-out queries' training positives.
  val = evalset.build_eval_set(d, split='train', queries=set(held_out))
  assert sorted(val.queries) == held_out and all(t.tolist() == [0] for t in val.targets)


def test_validation_floor_tops_up_in_hash_order_and_never_takes_an_eval_query():
  d = _dataset()
  evaluated = {x.query for x, s in zip(d.interactions, d.splits()) if s == 'eval'}
  candidates = sorted((q for q in (f'query {i}' for i in range(400)) if q not in evaluated),
                      key=validation.query_fraction)
  assert len(candidates) == 266
  by_share = validation.validation_queries(d, share=0.01)
  floored = validation.validation_queries(d, share=0.01, min_queries=50)
  # 1% of 266 is about 3 queries; the floor makes it 50, the 50 lowest hash fractions.
  assert len(by_share) < 10 and set(by_share) < set(floored)
  assert floored == sorted(candidates[:50]) and not set(floored) & evaluated
  # Capped at a quarter of the candidates (66), and never below what `share` already holds.
  assert len(validation.validation_queries(d, share=0.01, min_queries=1000)) == 266 // 4
  assert validation.validation_queries(d, share=0.5, min_queries=50) == \
      validation.validation_queries(d, share=0.5)
  with pytest.raises(ValueError, match='min_queries -1 must be an int >= 0'):
    validation.validation_queries(d, share=0.1, min_queries=-1)


def test_query_fraction_is_a_fixed_hash():
  # sha256('mmret/validation/v1' + 'red dress'), first 8 bytes, over 2^64: pinned so that the
  # split cannot change silently between releases.
  import hashlib
  digest = hashlib.sha256(b'mmret/validation/v1red dress').digest()
  assert validation.query_fraction('red dress') == int.from_bytes(digest[:8], 'big') / 2**64
  assert 0.0 <= validation.query_fraction('red dress') < 1.0


@flax.struct.dataclass
class _State:
  params: dict


def _run(scores, every, num_steps):
  """Scores by the params' value: params['w'] = step, validated score = scores[step]."""
  selector = selection.Selector(lambda p: {'recall@10': scores[int(p['w'])]},
                                metric='recall@10', every=every, num_steps=num_steps)
  selector.start({'w': jnp.array(0)})
  state = None
  for step in range(1, num_steps + 1):
    state = selector(step, _State(params={'w': jnp.array(step)}))
  return selector, state


def test_selector_keeps_the_best_validated_step():
  scores = {0: 0.50, 1: 0.0, 2: 0.60, 3: 0.0, 4: 0.70, 5: 0.0, 6: 0.55, 7: 0.58}
  selector, state = _run(scores, every=2, num_steps=7)
  # Validated: the init (0), every 2nd step and the last (7); steps 1, 3, 5 never are.
  assert selector.history == [(0, 0.5), (2, 0.6), (4, 0.7), (6, 0.55), (7, 0.58)]
  assert selector.best_step == 4 and int(state.params['w']) == 4  # the last state is the best
  assert 'WARNING' not in selector.summary()
  results = selector.results()
  assert results.pop('select/lift') == pytest.approx(0.2)
  assert results == {'select/best_step': 4.0, 'select/best_score': 0.7,
                     'select/initial_score': 0.5}


def test_selector_keeps_the_initialisation_when_training_never_beat_it():
  scores = {0: 0.8, 1: 0.7, 2: 0.75, 3: 0.6}
  selector, state = _run(scores, every=1, num_steps=3)
  # The run ends with its initial parameters, not the best of the worse trained steps.
  assert selector.best_step == 0 and int(state.params['w']) == 0
  line = selector.summary()
  assert '\n' not in line and 'no trained step beat the untrained initialisation' in line
  assert 'best trained 0.7500' in line
  assert selector.results() == {'select/best_step': 0.0, 'select/best_score': 0.8,
                                'select/initial_score': 0.8, 'select/lift': 0.0}


def test_selector_needs_a_trained_step_to_beat_not_tie_the_initialisation():
  selector, state = _run({0: 0.5, 1: 0.5, 2: 0.5}, every=1, num_steps=2)
  assert selector.best_step == 0 and int(state.params['w']) == 0


def test_selector_rejects_an_unknown_metric():
  selector = selection.Selector(lambda p: {'recall@10': 1.0}, metric='ndcg@10', every=1,
                                num_steps=1)
  with pytest.raises(KeyError, match="'ndcg@10' is not computed; known: recall@10"):
    selector.start({})
  assert math.isnan(selector.results()['select/best_score'])
  np.testing.assert_equal(selector.results()['select/best_step'], 0.0)


def test_selection_survives_a_resumed_run(tmp_path):
  scores = {0: 0.5, 1: 0.6, 2: 0.9, 3: 0.7, 4: 0.8}
  validate = lambda p: {'recall@10': scores[int(p['w'])]}
  state = lambda step: _State(params={'w': jnp.array(step)})

  def selector():
    s = selection.Selector(validate, metric='recall@10', every=1, num_steps=4,
                           directory=tmp_path / 'selection')
    s.start({'w': jnp.array(0)})
    return s

  first = selector()
  for step in (1, 2, 3):  # killed after step 3; the train checkpoint is of step 2
    first(step, state(step))
  saved = selection.Store(tmp_path / 'selection').load()
  assert saved['best_step'] == 2 and saved['history'][-1] == [3, 0.7]
  resumed = selector()
  for step in (3, 4):
    final = resumed(step, state(step))
  # Step 2, validated before the kill, is still the best, and its parameters come back.
  assert resumed.history == [(0, 0.5), (1, 0.6), (2, 0.9), (3, 0.7), (4, 0.8)]
  assert resumed.best_step == 2 and int(final.params['w']) == 2
  # A fresh run in the same directory starts over.
  fresh = selector()
  fresh(1, state(1))
  assert fresh.history == [(0, 0.5), (1, 0.6)] and fresh.best_step == 1
  assert selection.Store(tmp_path / 'selection').load()['best_step'] == 1
