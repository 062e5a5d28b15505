"""Que2Engage losses (mmret/losses/engagement.py) and objective (mmret/jobs/engage/objective.py).

Expected values come from float64 numpy loops written from the formulas; every loss runs eagerly
and under jit, and has a float64 gradient check.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import test_util

from mmret.losses import engagement
from mmret.jobs.engage import objective as engage_objective

S = engagement.DEFAULT_SCALE


def _relevance_ref(cos, positive, where, scale):
  out = []
  for i in range(cos.shape[0]):
    logits = [scale * float(cos[i, j]) for j in range(cos.shape[1]) if where[i, j]]
    m = max(logits)
    lse = m + math.log(sum(math.exp(z - m) for z in logits))
    out.append(lse - scale * float(cos[i, positive[i]]))
  return np.array(out)


def _bce_ref(cos, y, scale):
  out = np.zeros(np.shape(cos))
  for idx in np.ndindex(*np.shape(cos)):
    p = 1.0 / (1.0 + math.exp(-scale * float(cos[idx])))
    out[idx] = -(y[idx] * math.log(p) + (1 - y[idx]) * math.log(1 - p))
  return out


def _cos(rng, b, n):
  return np.tanh(rng.normal(size=(b, n)))  # in (-1, 1), as cosine similarities are


@pytest.mark.parametrize('use_jit', [False, True])
def test_relevance_loss_matches_reference(use_jit):
  rng = np.random.default_rng(0)
  cos = _cos(rng, 3, 6).astype(np.float32)
  positive = np.array([0, 2, 4], np.int32)
  where = rng.random((3, 6)) > 0.3
  where[np.arange(3), positive] = True
  fn = jax.jit(engagement.relevance_loss, static_argnames='scale') if use_jit else (
      engagement.relevance_loss)
  got = fn(cos, positive, scale=S, where=where)
  np.testing.assert_allclose(got, _relevance_ref(cos, positive, where, S), rtol=1e-5, atol=1e-5)
  # No mask: every column is a candidate.
  got = fn(cos, positive, scale=S)
  np.testing.assert_allclose(got, _relevance_ref(cos, positive, np.ones_like(where), S),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('use_jit', [False, True])
def test_engagement_loss_matches_reference(use_jit):
  rng = np.random.default_rng(1)
  cos = _cos(rng, 4, 3).astype(np.float32)
  y = (rng.random((4, 3)) > 0.5).astype(np.float32)
  fn = jax.jit(engagement.engagement_loss) if use_jit else engagement.engagement_loss
  np.testing.assert_allclose(fn(cos, y), _bce_ref(cos, y, S), rtol=1e-5, atol=1e-6)
  # Hand-computed: cos = 0 -> log 2 whatever the label; cos = 1, y = 0 -> ~20 (stable).
  np.testing.assert_allclose(fn(np.zeros(2, np.float32), np.array([0.0, 1.0])),
                             [math.log(2)] * 2, rtol=1e-6)
  np.testing.assert_allclose(fn(np.ones(1, np.float32), np.zeros(1)), [20.0], rtol=1e-6)


def test_candidate_mask():
  # Rows: positives items 7, 8, 7 (rows 0 and 2 engaged the same item), queries 0, 1, 0.
  positive_item = jnp.array([7, 8, 7])
  query = jnp.array([0, 1, 0])
  # Columns: the three positives, then page negatives 9 (valid) and 8 (padding, invalid).
  cand_item = jnp.array([7, 8, 7, 9, 8])
  cand_valid = jnp.array([True, True, True, True, False])
  cand_query = jnp.array([0, 1, 0, -1, -1])
  pos_col = jnp.array([0, 1, 2])
  got = engagement.candidate_mask(positive_item, cand_item, cand_valid, pos_col)
  expected = np.array([[1, 1, 0, 1, 0],    # column 2 repeats row 0's item
                       [1, 1, 1, 1, 0],
                       [0, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(got, expected)
  # Same query (rows 0, 2) and different items: other row's engaged item is left out too.
  cand_item2 = jnp.array([7, 8, 6, 9, 8])
  got = engagement.candidate_mask(jnp.array([7, 8, 6]), cand_item2, cand_valid, pos_col,
                                  query, cand_query)
  expected = np.array([[1, 1, 0, 1, 0],
                       [1, 1, 1, 1, 0],
                       [0, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(got, expected)


def _grad_check(fn, *args):
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) for a in args]
    # A small step: s = 20 makes the loss curved on the default step's scale.
    test_util.check_grads(jax.jit(fn), args, order=1, modes=['rev'], atol=1e-6, rtol=1e-6,
                          eps=1e-6)


def test_gradients():
  rng = np.random.default_rng(2)
  positive = np.array([1, 0, 3])
  where = np.ones((3, 5), bool)
  where[0, 4] = where[2, 0] = False
  _grad_check(lambda c: engagement.relevance_loss(c, positive, scale=S, where=where),
              _cos(rng, 3, 5))
  y = np.array([[1.0, 0.0], [0.0, 1.0]])
  _grad_check(lambda c: engagement.engagement_loss(c, y, scale=S), _cos(rng, 2, 2))


def test_relevance_gradient_analytic():
  # d/dcos_ij of -log softmax = s * (softmax_ij - [j == pos]); masked columns get 0.
  rng = np.random.default_rng(3)
  cos = _cos(rng, 2, 4).astype(np.float32)
  where = np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool)
  pos = np.array([0, 2])
  grad = jax.grad(lambda c: engagement.relevance_loss(c, pos, scale=S, where=where).sum())(cos)
  for i in range(2):
    z = np.where(where[i], S * cos[i].astype(np.float64), -np.inf)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    expected = S * (p - (np.arange(4) == pos[i]))
    np.testing.assert_allclose(grad[i], expected, rtol=1e-4, atol=1e-4)


def _loss_config(mixed, w_rel=0.8, w_eng=0.2):
  return ml_collections.ConfigDict(dict(
      weights=dict(relevance=w_rel, engagement=w_eng), scale=S, mixed_negatives=mixed))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize('mixed', [False, True])
def test_objective_matches_reference(mixed):
  rng = np.random.default_rng(4)
  b, g, e = 3, 3, 4
  q = _unit(rng.normal(size=(b, e))).astype(np.float32)
  d = _unit(rng.normal(size=(b, g, e))).astype(np.float32)
  item = np.array([[1, 10, 11], [2, 12, 1], [3, 13, 13]], np.int32)  # row 1's negative = item 1
  doc_mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)        # row 2 has 1 negative
  engaged = np.zeros((b, g), np.float32)
  engaged[:, 0] = 1
  batch = {'item_index': item, 'doc_mask': doc_mask, 'engaged': engaged,
           'query_index': np.array([0, 1, 2], np.int32)}
  out = {'query_vec': q, 'doc_vec': d}
  loss = _loss_config(mixed)
  total, metrics = jax.jit(lambda o, b: engage_objective.engage_objective(o, b, loss))(
      out, batch)

  # Reference: candidates = all valid docs (mixed) or the slot-0 docs, minus the row's item.
  if mixed:
    cand = d.reshape(b * g, e).astype(np.float64)
    cand_item, cand_valid = item.reshape(-1), doc_mask.reshape(-1)
    pos_col = np.arange(b) * g
  else:
    cand, cand_item, cand_valid = d[:, 0].astype(np.float64), item[:, 0], doc_mask[:, 0]
    pos_col = np.arange(b)
  cos = q.astype(np.float64) @ cand.T
  where = (item[:, :1] != cand_item[None]) & cand_valid[None]
  where[np.arange(b), pos_col] = True
  rel = _relevance_ref(cos, pos_col, where, S).mean()
  pair = np.einsum('be,bge->bg', q.astype(np.float64), d)
  bce = _bce_ref(pair, engaged, S)
  eng = (bce * doc_mask).sum() / doc_mask.sum()
  np.testing.assert_allclose(metrics['loss/relevance'], rel, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/engagement'], eng, rtol=1e-5)
  np.testing.assert_allclose(total, 0.8 * rel + 0.2 * eng, rtol=1e-5)
