"""Judged-irrelevant items as QIC hard negatives: never a relevant item, the loss by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmret.data import judged
from mmret.data import records
from mmret.losses import contrastive

ITEMS = [records.Item(f'x{i}', f'item {i}') for i in range(6)]


def _dataset(interactions):
  return records.Dataset(root=None, items=ITEMS, interactions=interactions, queries={},
                         context_names=())


def test_judged_negatives_exclude_every_relevant_pair():
  I = records.Interaction
  d = _dataset([
      I('q', 'x0', relevance=0.0, split='train'),
      I('q', 'x1', relevance=0.0, split='train'),
      I('q', 'x1', relevance=2.0, split='train'),          # judged again, relevant: not a negative
      I('q', 'x2', relevance=0.0, split='train'),
      I('q', 'x2', click=True, split='eval'),               # positive on another split
      I('q', 'x3', relevance=2.0, split='train'),           # relevant: the positive
      I('q', 'x4', relevance=0.0, split='eval'),            # eval judgements stay unseen
      I('r', 'x3', relevance=0.5, split='train'),           # below threshold 1: irrelevant to r
      I('r', 'x5', click=True, relevance=0.0, split='train'),  # clicked but judged irrelevant
      I('unknown', 'x0', relevance=0.0, split='train'),     # not in the query vocabulary
  ])
  table = judged.judged_negatives(d, ['q', 'r', 's'])
  assert [t.tolist() for t in table] == [[0], [3, 5], []]


def test_sampled_negatives_are_never_relevant():
  rng = np.random.default_rng(0)
  # 40 queries; query q's relevant items are q % 7 and its judged negatives the other 6 of 0..6
  # (items past 6 are never judged) -- except every 5th query, which has no judged negative.
  table = [np.array([] if q % 5 == 0 else [i for i in range(7) if i != q % 7], np.int64)
           for q in range(40)]
  query_index = np.concatenate([rng.integers(0, 40, 500), [-1, -1]])
  items, mask = judged.sample_judged_negatives(rng, table, query_index, num=3)
  assert items.shape == mask.shape == (502, 3) and items.dtype == np.int32
  expected_mask = (query_index >= 0) & (query_index % 5 != 0)
  np.testing.assert_array_equal(mask, np.repeat(expected_mask[:, None], 3, axis=1))
  drawn = items[mask].reshape(-1, 3)
  rows = query_index[expected_mask]
  assert not np.any(drawn == (rows % 7)[:, None])          # never the relevant item
  assert np.all(np.isin(drawn, np.arange(7)))
  assert len(np.unique(drawn)) == 7                        # all of the lists get drawn


def test_judged_negatives_valid_is_block_diagonal():
  row_valid = jnp.array([[True, False], [True, True], [False, False]])
  np.testing.assert_array_equal(contrastive.judged_negatives_valid(row_valid), [
      [1, 0, 0, 0, 0, 0],
      [0, 0, 1, 1, 0, 0],
      [0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize('jit', [False, True])
def test_softmax_qic_with_judged_negatives_by_hand(jit):
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  d = jnp.array([[0.8, 0.6], [0.6, 0.8]])
  neg = jnp.array([[0.0, 1.0], [1.0, 0.0]])     # row 0's and row 1's judged negative
  neg_valid = contrastive.judged_negatives_valid(jnp.array([[True], [False]]))
  valid = jnp.ones((2, 2), bool)
  fn = contrastive.qic_softmax
  if jit:
    fn = jax.jit(fn, static_argnames=('temperature', 'symmetric'))
  out = fn(q, d, valid, temperature=0.5, negatives=neg, negatives_valid=neg_valid)
  # Row 0: logits 0.8/0.5, 0.6/0.5 (in-batch) and 0/0.5 (its judged negative).
  row0 = -1.6 + np.log(np.exp(1.6) + np.exp(1.2) + np.exp(0.0))
  # Row 1: its judged negative is masked: only the in-batch columns 0.6/0.5, 0.8/0.5.
  row1 = -1.6 + np.log(np.exp(1.2) + np.exp(1.6))
  np.testing.assert_allclose(out, [row0, row1], rtol=1e-6)
  # Without negatives the loss is the plain in-batch one, which is lower for row 0.
  plain = contrastive.qic_softmax(q, d, valid, temperature=0.5)
  np.testing.assert_allclose(plain[1], out[1], rtol=1e-6)
  assert plain[0] < out[0]


def test_sigmoid_and_am_softmax_with_judged_negatives_by_hand():
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  d = jnp.array([[0.8, 0.6], [0.6, 0.8]])
  neg = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  neg_valid = contrastive.judged_negatives_valid(jnp.array([[True], [True]]))
  valid = jnp.ones((2, 2), bool)
  sig = contrastive.qic_sigmoid(q, d, valid, scale=2.0, negatives=neg, negatives_valid=neg_valid)
  bce = lambda z, y: float(optax.sigmoid_binary_cross_entropy(jnp.float32(z), jnp.float32(y)))
  # Row 0: positive 1.6, in-batch negative 1.2, judged negative 0 -> mean of three BCEs.
  np.testing.assert_allclose(sig[0], (bce(1.6, 1) + bce(1.2, 0) + bce(0.0, 0)) / 3, rtol=1e-6)
  am = contrastive.qic_am_softmax(q, d, valid, scale=10.0, margin=0.1, negatives=neg,
                                  negatives_valid=neg_valid)
  # Row 1: positive s(0.8 - m) = 7, in-batch 10 * 0.6 = 6, judged 10 * 0 = 0.
  np.testing.assert_allclose(am[1], -7 + np.log(np.exp(7) + np.exp(6) + 1), rtol=1e-6)


def test_most_clicked_positives_one_item_per_query():
  from mmret.data import positives
  I = records.Interaction
  d = _dataset([
      I('q', 'x1', click=True, split='train'), I('q', 'x2', click=True, split='train'),
      I('q', 'x2', click=True, split='train'), I('q', 'x3', click=True, split='eval'),
      I('q', 'x3', click=True, split='eval'), I('q', 'x3', click=True, split='eval'),  # eval
      I('r', 'x4', click=True, split='train'), I('r', 'x0', click=True, split='train'),  # tie
      I('s', 'x5', click=False, split='train')])                                         # none
  pairs = positives.most_clicked_pairs(d, ['q', 'r', 's'])
  assert pairs == {(0, 2), (1, 0)}
  # Train rows: q-x1, q-x2, q-x2, r-x4, r-x0, s-x5. Only q's most-clicked pair survives: x1 is
  # not it, r is held out, s has no positive.
  keep = positives.training_rows(d, ['q', 'r', 's'], exclude_queries=frozenset({1}), only=pairs)
  assert keep.tolist() == [False, True, True, False, False, False]
  assert positives.training_rows(d, ['q', 'r', 's']).tolist() == [True] * 5 + [False]
  assert positives.training_rows(d, ['q', 'r', 's'], split='eval').tolist() == [True] * 3
  with pytest.raises(ValueError, match="data.positives='best': choose from"):
    positives.check('best')
