"""Stage-2 losses and fusion: sampled softmax (logQ, accidental hits, several positives) against
numpy, gradient checks, triplet and gate against hand-computed values, the fused item vector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ml_collections

from mmret.jobs.recall import data as recall_data
from mmret.losses import sampled_softmax
from mmret.losses import triplet
from mmret.towers import recall as recall_model


def _reference(q, pos, neg, tau, pos_lq, neg_lq, hits):
  b, p = pos.shape[:2]
  out = np.zeros((b, p))
  for i in range(b):
    for j in range(p):
      s_pos = q[i] @ pos[i, j] / tau - pos_lq[i, j]
      s_neg = [q[i] @ neg[k] / tau - neg_lq[k] for k in range(len(neg)) if not hits[i, k]]
      logits = np.array([s_pos] + s_neg, np.float64)
      out[i, j] = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - s_pos
  return out


@pytest.fixture
def problem():
  rs = np.random.RandomState(0)
  b, p, s, d = 3, 3, 6, 4
  pos_ids = np.array([[1, 2, 0], [3, 3, 0], [7, 8, 9]], np.int32)
  mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
  neg_ids = np.array([2, 4, 3, 5, 0, 1], np.int32)  # 2 and 1 hit row 0, 3 hits row 1; 0 pads
  return dict(q=rs.randn(b, d).astype(np.float32), pos=rs.randn(b, p, d).astype(np.float32),
              neg=rs.randn(s, d).astype(np.float32), pos_ids=pos_ids, mask=mask,
              neg_ids=neg_ids, pos_lq=np.log(rs.uniform(0.01, 0.5, (b, p))).astype(np.float32),
              neg_lq=np.log(rs.uniform(0.01, 0.5, s)).astype(np.float32))


def test_accidental_hits_by_hand(problem):
  hits = np.asarray(sampled_softmax.accidental_hits(problem['pos_ids'], problem['mask'],
                                                    problem['neg_ids']))
  expected = np.zeros((3, 6), bool)
  expected[0, [0, 5]] = True   # negatives 2 and 1 are row 0's positives
  expected[1, 2] = True        # negative 3; row 1's padded slot (item 0) is not a hit
  np.testing.assert_array_equal(hits, expected)


@pytest.mark.parametrize('jit', [False, True])
def test_sampled_softmax_matches_numpy(problem, jit):
  hits = sampled_softmax.accidental_hits(problem['pos_ids'], problem['mask'], problem['neg_ids'])
  fn = lambda q, pos, neg: sampled_softmax.sampled_softmax_loss(
      q, pos, neg, temperature=0.5, positive_log_q=problem['pos_lq'],
      negative_log_q=problem['neg_lq'], hits=hits)
  fn = jax.jit(fn) if jit else fn
  got = np.asarray(fn(problem['q'], problem['pos'], problem['neg']))
  expected = _reference(problem['q'], problem['pos'], problem['neg'], 0.5, problem['pos_lq'],
                        problem['neg_lq'], np.asarray(hits))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Without correction and masking it is the plain sampled softmax.
  plain = np.asarray(sampled_softmax.sampled_softmax_loss(
      problem['q'], problem['pos'], problem['neg'], temperature=0.5))
  expected = _reference(problem['q'], problem['pos'], problem['neg'], 0.5,
                        np.zeros((3, 3)), np.zeros(6), np.zeros((3, 6), bool))
  np.testing.assert_allclose(plain, expected, rtol=1e-5, atol=1e-5)


def test_log_q_lowers_the_popular_negatives_weight(problem):
  # A popular negative (high q) contributes less after the correction: the loss drops when
  # every negative's log q rises.
  base = sampled_softmax.sampled_softmax_loss(problem['q'], problem['pos'], problem['neg'],
                                              negative_log_q=jnp.zeros(6))
  popular = sampled_softmax.sampled_softmax_loss(problem['q'], problem['pos'], problem['neg'],
                                                 negative_log_q=jnp.full(6, 2.0))
  assert np.all(np.asarray(popular) < np.asarray(base))


def test_sampled_softmax_gradients(problem):
  hits = sampled_softmax.accidental_hits(problem['pos_ids'], problem['mask'], problem['neg_ids'])
  weight = jnp.asarray(problem['mask'], jnp.float32)

  def loss(q, pos, neg):
    per = sampled_softmax.sampled_softmax_loss(
        q, pos, neg, temperature=0.5, positive_log_q=problem['pos_lq'],
        negative_log_q=problem['neg_lq'], hits=hits)
    return jnp.sum(per * weight)

  check_grads(loss, (problem['q'], problem['pos'], problem['neg']), order=1, modes=['rev'],
              eps=1e-2, atol=2e-2, rtol=2e-2)
  # Masked-out negatives get no gradient from the rows they hit: negative 5 (item 1) is only
  # a hit, for row 0, so with row 0 alone it receives none.
  g_neg = jax.grad(lambda n: jnp.sum(sampled_softmax.sampled_softmax_loss(
      problem['q'][:1], problem['pos'][:1], n, hits=hits[:1]) * weight[:1]))(problem['neg'])
  np.testing.assert_array_equal(np.asarray(g_neg)[[0, 5]], 0.0)
  assert np.abs(np.asarray(g_neg)[1]).sum() > 0


def test_triplet_by_hand():
  anchor = jnp.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
  positive = jnp.array([[0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  negative = jnp.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
  # d = 2 - 2 cos: (2, 4) -> 0.5 + 2 - 4 < 0; (2, 2) -> 0.5; (0, 0) -> 0.5.
  got = jax.jit(triplet.triplet_margin_loss, static_argnames='margin')(
      anchor, positive, negative, margin=0.5)
  np.testing.assert_allclose(np.asarray(got), [0.0, 0.5, 0.5], atol=1e-6)


def test_gate_by_hand():
  stats = recall_data.ItemStats(impressions=np.array([0.0, 9.0], np.float32),
                                clicks=np.array([0.0, 3.0], np.float32),
                                category=np.zeros(2, np.int32), num_categories=0).gate_features()
  np.testing.assert_allclose(np.asarray(stats), [[0, 0, 0], [np.log(10), np.log(4), 1 / 3]],
                             rtol=1e-6)
  gate = recall_model.Gate(hidden=2)
  params = {'hidden': {'kernel': jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
                       'bias': jnp.array([0.0, -1.0])},
            'out': {'kernel': jnp.array([[1.0], [-2.0]]), 'bias': jnp.array([0.5])}}
  g = np.asarray(gate.apply({'params': params}, stats))
  # row 0: h = relu(0, -1) = (0, 0) -> sigmoid(0.5); row 1: h = (ln 10, ln 4 - 1).
  z1 = np.log(10) - 2 * (np.log(4) - 1) + 0.5
  np.testing.assert_allclose(g[:, 0], [1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(-z1))],
                             rtol=1e-6)


def _model(fusion):
  c = ml_collections.ConfigDict(dict(fusion=fusion, dim=4, gate_hidden=3, use_category=False))
  return recall_model.RecallModel(c)


@pytest.mark.parametrize('fusion', ['gate_add', 'gate_concat'])
def test_gated_item_vector(fusion):
  rs = np.random.RandomState(0)
  args = (rs.randn(2, 4), rs.randn(2, 6), rs.randn(5, 4), rs.randn(5, 6),
          np.abs(rs.randn(5, 3)))
  model = _model(fusion)
  params = model.init(jax.random.key(0), *args)
  out = jax.tree.map(np.asarray, model.apply(params, *args))
  g, id_view, content = out['gate'], out['id_view'], out['content_view']
  assert g.shape == (5, 1) and np.all((g > 0) & (g < 1))
  if fusion == 'gate_add':
    fused = g * id_view + (1 - g) * content
  else:
    fused = np.concatenate([id_view, g * content], axis=-1)
    # The query is duplicated, so <query, item> adds the two views' scores, gated.
    q = out['query_base']
    np.testing.assert_allclose(out['query_vec'], np.concatenate([q, q], -1) / np.sqrt(2),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['item_vec'], fused / np.linalg.norm(fused, axis=-1,
                                                                      keepdims=True),
                             rtol=1e-5, atol=1e-6)


def test_id_only_and_mm_only_ignore_the_other_input():
  rs = np.random.RandomState(1)
  args = [rs.randn(2, 4), rs.randn(2, 6), rs.randn(3, 4), rs.randn(3, 6), rs.randn(3, 3)]
  for fusion, ignored in (('id_only', (1, 3)), ('mm_only', (0, 2))):
    model = _model(fusion)
    params = model.init(jax.random.key(0), *args)
    changed = list(args)
    for i in ignored:
      changed[i] = changed[i] + 1.0
    a, b = model.apply(params, *args), model.apply(params, *changed)
    np.testing.assert_array_equal(np.asarray(a['item_vec']), np.asarray(b['item_vec']))
    np.testing.assert_array_equal(np.asarray(a['query_vec']), np.asarray(b['query_vec']))
