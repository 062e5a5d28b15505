"""Cold-start dropout in the stage-2 train step (mmret/jobs/recall/step.py), on hand-made
inputs: a dropped occurrence sees zero statistics and the cold ID row, the rate is realised,
rate 0 is the old step bit for bit, and no ID row of a dropped occurrence is updated."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmret.config import ConfigError
from mmret.config import load_config
from mmret.jobs import validate
from mmret.embeddings import hashing
from mmret.embeddings import sparse_optim
from mmret.towers import recall as recall_model
from mmret.jobs.recall import data as recall_data
from mmret.jobs.recall import step as recall_step

# 12 items: 0-9 known (rows 0-9), 10 and 11 cold (no train impression). Table rows: 10 known,
# OOV row 10, hashed buckets 11-14, one padding row (15).
N, V, ROWS, D, E = 12, 10, 16, 4, 6
COLD_ROWS = np.array([11, 12, 13, 14, 11, 12, 13, 14, 11, 12, 13, 11], np.int32)
ITEM_ROWS = np.concatenate([np.arange(V), COLD_ROWS[V:]]).astype(np.int32)
LOSS = ml_collections.ConfigDict(dict(temperature=0.1, logq_correction=True, view_weight=0.1,
                                      triplet_weight=0.1, triplet_margin=0.5))
ROW_OPT = sparse_optim.RowOptimizer('rowwise_adagrad', learning_rate=0.1)
SEED = 3


def _stats():
  impressions = np.array([50, 40, 30, 20, 10, 8, 6, 4, 2, 1, 0, 0], np.float32)
  clicks = np.array([9, 8, 5, 4, 2, 2, 1, 1, 1, 0, 0, 0], np.float32)
  return recall_data.ItemStats(impressions, clicks, np.zeros(N, np.int32), 0)


def _problem(fusion='gate_add'):
  rs = np.random.RandomState(0)
  frozen = {
      'query_vectors': jnp.asarray(rs.randn(5, E), jnp.float32),
      'item_vectors': jnp.asarray(rs.randn(N, E), jnp.float32),
      'item_stats': jnp.asarray(_stats().gate_features()),
      'item_category': jnp.zeros(N, jnp.int32),
      'item_cold_rows': jnp.asarray(COLD_ROWS),
  }
  positives = np.array([[0, 1, 2], [3, 4, 0], [5, 6, 7], [8, 9, 1]], np.int32)
  mask = np.array([[True, True, True], [True, True, False], [True, True, True],
                   [True, True, True]])
  positives = np.where(mask, positives, 0)
  negatives = np.array([1, 2, 4, 6, 0, 9, 3, 5], np.int32)
  batch = {
      'query_index': np.array([0, 1, 2, 3], np.int32),
      'query_rows': np.array([0, 1, 2, 3], np.int32),
      'positives': positives, 'positive_rows': ITEM_ROWS[positives], 'positive_mask': mask,
      'positive_log_q': np.where(mask, -2.0, 0.0).astype(np.float32),
      'negatives': negatives, 'negative_rows': ITEM_ROWS[negatives],
      'negative_log_q': np.full(8, -2.0, np.float32),
  }
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  model = recall_model.RecallModel(ml_collections.ConfigDict(dict(
      fusion=fusion, dim=D, gate_hidden=3, use_category=False)))
  z = lambda *s: np.zeros(s, np.float32)
  params = model.init(jax.random.key(1), z(2, D), z(2, E), z(2, D), z(2, E), z(2, 3),
                      np.zeros(2, np.int32))['params']
  tx = optax.adam(1e-2)

  def table(seed, rows):
    values = jax.random.normal(jax.random.key(seed), (rows, D))
    return sparse_optim.SparseTable(table=values, slots={'accumulator': jnp.zeros(rows)})

  state = recall_step.RecallState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                                  query_table=table(2, 8), item_table=table(3, ROWS))
  return model, tx, state, batch, frozen


def _step(model, tx, **kwargs):
  return jax.jit(functools.partial(recall_step.train_step, model=model, tx=tx, row_opt=ROW_OPT,
                                   loss=LOSS, **kwargs))


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_cold_row_is_the_row_an_unseen_id_looks_up():
  vocab = hashing.IdVocabulary(['a', 'b'], num_buckets=7, salt='item:')
  for key in ('a', 'b'):  # known: its own row; cold: the bucket eval would give it unseen
    assert vocab.row(key) < 2 and vocab.unseen_row(key) == hashing.IdVocabulary(
        [], 7, salt='item:').row(key) + 2
  assert vocab.unseen_row('zz') == vocab.row('zz')
  assert hashing.IdVocabulary(['a'], 0).unseen_row('a') == 1  # no buckets: the OOV row
  # Cold items' statistics are zero: what a dropped occurrence is given.
  np.testing.assert_array_equal(_stats().gate_features()[V:], 0.0)


def test_dropped_occurrence_sees_zero_stats_and_the_cold_id_row():
  _, _, state, batch, frozen = _problem()
  table = state.item_table.table
  item_index = jnp.concatenate([batch['positives'].reshape(-1), batch['negatives']])
  rows = jnp.asarray(ITEM_ROWS)[item_index]
  i_id = table[rows]
  stats = frozen['item_stats'][item_index]
  dropped = jnp.zeros(item_index.shape[0], bool).at[jnp.array([0, 4, 13, 19])].set(True)
  got_id, got_stats, got_rows = recall_step.cold_item_inputs(table, frozen, item_index, rows,
                                                             i_id, stats, dropped)
  d, idx = np.asarray(dropped), np.asarray(item_index)
  # Dropped: exactly what eval feeds a cold item whose ID hashes to the same bucket (occurrence
  # 0 is item 0, whose cold row 11 is cold item 11's row), and a cold item's statistics.
  np.testing.assert_array_equal(np.asarray(got_id)[d], np.asarray(table)[COLD_ROWS[idx[d]]])
  np.testing.assert_array_equal(np.asarray(got_id)[0], np.asarray(table)[ITEM_ROWS[11]])
  np.testing.assert_array_equal(np.asarray(got_stats)[d], 0.0)
  np.testing.assert_array_equal(np.asarray(got_stats)[d],
                                np.asarray(frozen['item_stats'])[[10] * d.sum()])
  np.testing.assert_array_equal(np.asarray(got_rows)[d], ROWS)  # padding: no update
  # Kept: untouched.
  np.testing.assert_array_equal(np.asarray(got_id)[~d], np.asarray(i_id)[~d])
  np.testing.assert_array_equal(np.asarray(got_stats)[~d], np.asarray(stats)[~d])
  np.testing.assert_array_equal(np.asarray(got_rows)[~d], np.asarray(rows)[~d])


@pytest.mark.parametrize('rate', [0.1, 0.3])
def test_rate_is_realised_and_the_mask_is_a_function_of_seed_and_step(rate):
  n = 50_000
  mask = jax.jit(recall_step.cold_dropout_mask, static_argnums=(0, 2, 3))
  for step in range(3):
    got = np.asarray(mask(SEED, jnp.int32(step), n, rate))
    assert abs(got.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # binomial, 4 sigma
    np.testing.assert_array_equal(got, np.asarray(mask(SEED, jnp.int32(step), n, rate)))
  assert not np.array_equal(np.asarray(mask(SEED, jnp.int32(0), n, rate)),
                            np.asarray(mask(SEED, jnp.int32(1), n, rate)))
  assert not np.array_equal(np.asarray(mask(SEED, jnp.int32(0), n, rate)),
                            np.asarray(mask(SEED + 1, jnp.int32(0), n, rate)))
  # Inside the step: the realised share of the step's 20 occurrences is that mask's.
  model, tx, state, batch, frozen = _problem()
  _, metrics = _step(model, tx, cold_dropout=rate, seed=SEED)(state, batch, frozen)
  expected = np.asarray(recall_step.cold_dropout_mask(SEED, jnp.int32(0), 20, rate)).mean()
  assert float(metrics['train/cold_dropout_rate']) == pytest.approx(expected)


@pytest.mark.parametrize('fusion', ['add', 'gate_add'])
def test_rate_zero_equals_the_dropout_path_when_nothing_is_dropped(fusion):
  # Two code paths: rate 0 compiles the step without any cold-dropout machinery; a tiny rate
  # runs all of it (mask, cold-row gather, the selects, the kept-weight losses) with a mask
  # that, for this seed, drops nothing. Both must train identically.
  model, tx, state, batch, frozen = _problem(fusion)
  tiny_rate = 1e-6
  assert not np.asarray(recall_step.cold_dropout_mask(SEED, jnp.int32(0), 20, tiny_rate)).any()
  off = _step(model, tx, cold_dropout=0.0, seed=SEED)
  on = _step(model, tx, cold_dropout=tiny_rate, seed=SEED)
  s_off, m_off = off(state, batch, frozen)
  s_on, m_on = on(state, batch, frozen)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(s_off), jax.device_get(s_on))
  for key in m_off:
    np.testing.assert_allclose(float(m_off[key]), float(m_on[key]), rtol=1e-6, err_msg=key)
  assert float(m_on['train/cold_dropout_rate']) == 0.0 and 'train/cold_dropout_rate' not in m_off
  # The step without dropout does not read item_cold_rows at all.
  no_cold = {k: v for k, v in frozen.items() if k != 'item_cold_rows'}
  _assert_trees_equal(off(state, batch, no_cold)[0], s_off)
  # And it is not a no-op: the ID rows of the batch move.
  assert not np.array_equal(np.asarray(s_off.item_table.table), np.asarray(state.item_table.table))


@pytest.mark.parametrize('fusion', ['add', 'gate_add'])
def test_every_occurrence_dropped_is_the_cold_problem_and_updates_no_id_row(fusion):
  model, tx, state, batch, frozen = _problem(fusion)
  new_state, metrics = _step(model, tx, cold_dropout=1.0, seed=SEED)(state, batch, frozen)
  # Reference: the old step on the same pages where every item is cold (zero statistics, its
  # cold row): the main loss is the same.
  cold_batch = dict(batch, positive_rows=jnp.asarray(COLD_ROWS)[batch['positives']],
                    negative_rows=jnp.asarray(COLD_ROWS)[batch['negatives']])
  cold_frozen = dict(frozen, item_stats=jnp.zeros_like(frozen['item_stats']))
  ref_state, ref = _step(model, tx)(state, cold_batch, cold_frozen)
  np.testing.assert_allclose(float(metrics['loss/softmax']), float(ref['loss/softmax']),
                             rtol=1e-6)
  assert float(metrics['train/cold_dropout_rate']) == 1.0
  if fusion == 'add':  # no auxiliary losses: the dense towers take the same update
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new_state.params, ref_state.params)
  else:
    assert float(metrics['loss/id_view']) == 0.0 and float(metrics['loss/triplet']) == 0.0
    assert 0.0 < float(metrics['train/gate_mean_dropped']) < 1.0
  # No item row is updated (known rows and the cold buckets alike), nor its slot; the
  # reference, which trains the bucket rows, does change them.
  _assert_trees_equal(new_state.item_table, state.item_table)
  assert not np.array_equal(np.asarray(ref_state.item_table.table[11:15]),
                            np.asarray(state.item_table.table[11:15]))
  # The query side is trained as usual.
  assert not np.array_equal(np.asarray(new_state.query_table.table[:4]),
                            np.asarray(state.query_table.table[:4]))


def test_rows_of_dropped_occurrences_stay_bit_identical():
  model, tx, state, batch, frozen = _problem()
  rate = 0.5
  new_state, _ = _step(model, tx, cold_dropout=rate, seed=SEED)(state, batch, frozen)
  item_index = np.concatenate([np.asarray(batch['positives']).reshape(-1),
                               np.asarray(batch['negatives'])])
  valid = np.concatenate([np.asarray(batch['positive_mask']).reshape(-1), np.ones(8, bool)])
  dropped = np.asarray(recall_step.cold_dropout_mask(SEED, jnp.int32(0), 20, rate))
  kept_rows = set(ITEM_ROWS[item_index[valid & ~dropped]].tolist())
  dropped_only = set(ITEM_ROWS[item_index[valid & dropped]].tolist()) - kept_rows
  assert kept_rows and dropped_only  # this seed draws both kinds
  old, new = jax.device_get(state.item_table), jax.device_get(new_state.item_table)
  untouched = np.array(sorted(set(range(ROWS)) - kept_rows))
  assert set(dropped_only) <= set(untouched.tolist())
  np.testing.assert_array_equal(new.table[untouched], old.table[untouched])
  np.testing.assert_array_equal(new.slots['accumulator'][untouched],
                                old.slots['accumulator'][untouched])
  for row in kept_rows:  # every row used by a kept occurrence is updated
    assert not np.array_equal(new.table[row], old.table[row]), row


def test_rate_outside_unit_interval_is_named():
  for bad in (-0.1, 1.5, float('nan')):
    with pytest.raises(ConfigError, match='train.cold_dropout'):
      validate(load_config('configs/recall.py:tiny', {'train.cold_dropout': bad}), 8)
  with pytest.raises(ConfigError, match='train.cold_dropout_fusions'):
    validate(load_config('configs/recall.py:tiny',
                         {'train.cold_dropout_fusions': ('gated_add',)}), 8)
  for ok in (0.0, 1.0):
    validate(load_config('configs/recall.py:tiny', {'train.cold_dropout': ok}), 8)
