"""Stage-1 per-example losses (mmret/losses/token.py, mmret/losses/contrastive.py).

Expected values come from explicit float64 numpy loops written from the formulas, independent of
the implementation. Every loss runs eagerly and under jit, and has a float64 gradient check.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util

from mmret.losses import contrastive
from mmret.losses import token

# -- numpy references (loops, float64) ---------------------------------------------------------


def _log_softmax_np(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - math.log(np.exp(x - m).sum())


def _masked_lm_ref(logits, labels, weights):
  out = []
  for b in range(logits.shape[0]):
    num, den = 0.0, 0.0
    for p in range(logits.shape[1]):
      if weights[b, p] != 0:
        num += weights[b, p] * -_log_softmax_np(logits[b, p])[labels[b, p]]
      den += weights[b, p]
    out.append(num / max(den, 1.0))
  return np.array(out)


def _masked_patch_kl_ref(log_probs, targets, weights):
  out = []
  for b in range(log_probs.shape[0]):
    num, den = 0.0, 0.0
    for p in range(log_probs.shape[1]):
      kl = 0.0
      for c in range(log_probs.shape[2]):
        t = float(targets[b, p, c])
        if t > 0:
          kl += t * (math.log(t) - float(log_probs[b, p, c]))
      if weights[b, p] != 0:
        num += weights[b, p] * kl
      den += weights[b, p]
    out.append(num / max(den, 1.0))
  return np.array(out)


def _bce_np(z, y):
  z = float(z)
  p = 1.0 / (1.0 + math.exp(-z))
  return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _candidates_np(valid):
  return np.asarray(valid, bool) | np.eye(len(valid), dtype=bool)


def _sigmoid_ref(q, d, valid, scale, bias, symmetric=False):
  b = q.shape[0]
  cand = _candidates_np(valid)
  z = np.array([[scale * float(q[i] @ d[j]) + bias for j in range(b)] for i in range(b)])
  rows = [np.mean([_bce_np(z[i, j], float(i == j)) for j in range(b) if cand[i, j]])
          for i in range(b)]
  if not symmetric:
    return np.array(rows)
  cols = [np.mean([_bce_np(z[j, i], float(i == j)) for j in range(b) if cand[j, i]])
          for i in range(b)]
  return 0.5 * (np.array(rows) + np.array(cols))


def _softmax_rows_ref(logits, valid, symmetric=False):
  b = logits.shape[0]
  cand = _candidates_np(valid)

  def ce(vals, pos):
    m = max(vals)
    return -(pos - m - math.log(sum(math.exp(v - m) for v in vals)))

  rows = [ce([logits[i, j] for j in range(b) if cand[i, j]], logits[i, i]) for i in range(b)]
  if not symmetric:
    return np.array(rows)
  cols = [ce([logits[j, i] for j in range(b) if cand[j, i]], logits[i, i]) for i in range(b)]
  return 0.5 * (np.array(rows) + np.array(cols))


def _softmax_ref(q, d, valid, temperature, symmetric=False):
  b = q.shape[0]
  logits = np.array([[float(q[i] @ d[j]) / temperature for j in range(b)] for i in range(b)])
  return _softmax_rows_ref(logits, valid, symmetric)


def _am_softmax_ref(q, d, valid, scale, margin, symmetric=False):
  b = q.shape[0]
  logits = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      cos = float(q[i] @ d[j]) / (np.linalg.norm(q[i]) * np.linalg.norm(d[j]))
      logits[i, j] = scale * (cos - margin) if i == j else scale * cos
  return _softmax_rows_ref(logits, valid, symmetric)


def _qim_ref(logits, labels, weights=None):
  out = []
  for b in range(logits.shape[0]):
    ws = np.ones(logits.shape[1]) if weights is None else weights[b]
    num = sum(w * _bce_np(z, y) for z, y, w in zip(logits[b], labels[b], ws) if w != 0)
    den = float(np.sum(ws))
    out.append(num / den if den != 0 else 0.0)
  return np.array(out)


# -- fixtures ----------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
B, D = 4, 3
ITEM_INDEX = np.array([7, 3, 7, 5])  # rows 0 and 2 hold the same item (a duplicate)
VALID = np.array([[1, 1, 0, 1],
                  [1, 1, 1, 1],
                  [0, 1, 1, 1],
                  [1, 1, 1, 1]], bool)
Q = _RNG.normal(size=(B, D)).astype(np.float32)
DV = _RNG.normal(size=(B, D)).astype(np.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _run(fn, jit, *args):
  return np.asarray((jax.jit(fn) if jit else fn)(*args))


JIT = pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
SYM = pytest.mark.parametrize('symmetric', [False, True], ids=['q2i', 'symmetric'])


# -- masked LM ---------------------------------------------------------------------------------


@JIT
def test_masked_lm_matches_reference(jit):
  logits = _RNG.normal(size=(3, 4, 6)).astype(np.float32) * 3
  labels = np.array([[1, 5, 0, 2], [3, 3, 3, 3], [0, 1, 2, 4]], np.int32)
  weights = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  got = _run(token.masked_lm, jit, logits, labels, weights)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, _masked_lm_ref(logits, labels, weights), rtol=1e-5, atol=1e-6)
  assert got[1] == 0.0


def test_masked_lm_literal_values():
  # Uniform logits over V = 4 -> CE = log 4 on every masked slot; the mean keeps log 4.
  logits = np.zeros((1, 3, 4), np.float32)
  got = token.masked_lm(logits, np.array([[0, 1, 2]]), np.array([[1., 1., 0.]]))
  np.testing.assert_allclose(got, [math.log(4.0)], rtol=1e-6)
  # Fractional weights summing below 1 are divided by 1, not by their sum.
  got = token.masked_lm(logits, np.array([[0, 1, 2]]), np.array([[0.25, 0.25, 0.]]))
  np.testing.assert_allclose(got, [0.5 * math.log(4.0)], rtol=1e-6)


def test_masked_lm_padding_labels_out_of_range_are_harmless():
  logits = _RNG.normal(size=(2, 3, 5)).astype(np.float32)
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  labels = np.array([[2, 4, 0], [1, 0, 0]], np.int32)
  bad = labels.copy()
  bad[0, 2], bad[1, 1], bad[1, 2] = 99, -100, 5
  np.testing.assert_allclose(token.masked_lm(logits, bad, weights),
                             token.masked_lm(logits, labels, weights), rtol=1e-6)
  grad = jax.grad(lambda x: token.masked_lm(x, bad, weights).sum())(logits)
  assert np.all(np.isfinite(grad))


# -- masked patch KL ---------------------------------------------------------------------------


@JIT
def test_masked_patch_kl_matches_reference(jit):
  log_probs = np.asarray(jax.nn.log_softmax(_RNG.normal(size=(3, 2, 4)) * 2, -1), np.float32)
  targets = np.array([[[0.5, 0.5, 0, 0], [1, 0, 0, 0]],
                      [[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1]],
                      [[0.25, 0.25, 0.25, 0.25], [0, 0.5, 0, 0.5]]], np.float32)
  weights = np.array([[1, 1], [0, 1], [0, 0]], np.float32)
  got = _run(token.masked_patch_kl, jit, log_probs, targets, weights)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, _masked_patch_kl_ref(log_probs, targets, weights),
                             rtol=1e-5, atol=1e-6)
  assert got[2] == 0.0


def test_masked_patch_kl_literal_values():
  half = np.log(np.array([[[0.5, 0.5]]], np.float32))
  # One-hot target against a uniform prediction: KL = log 2.
  np.testing.assert_allclose(token.masked_patch_kl(half, np.array([[[1., 0.]]]), np.ones((1, 1))),
                             [math.log(2.0)], rtol=1e-6)
  # Prediction equal to the target: KL = 0.
  np.testing.assert_allclose(token.masked_patch_kl(half, np.array([[[.5, .5]]]), np.ones((1, 1))),
                             [0.0], atol=1e-7)


# -- QIC ---------------------------------------------------------------------------------------


def test_similarity_valid_mask():
  got = np.asarray(contrastive.similarity_valid_mask(jnp.asarray(ITEM_INDEX)))
  np.testing.assert_array_equal(got, VALID)
  np.testing.assert_array_equal(contrastive.similarity_valid_mask(jnp.array([1, 1, 1])),
                                np.eye(3, dtype=bool))
  # Rows 0 and 2 share a query: each other's items are no negatives; -1 (unknown) never matches.
  got = contrastive.similarity_valid_mask(jnp.array([1, 2, 3, 4]), jnp.array([7, 8, 7, -1]))
  np.testing.assert_array_equal(got, [[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])


@JIT
@SYM
def test_qic_sigmoid_matches_reference(jit, symmetric):
  fn = functools.partial(contrastive.qic_sigmoid, scale=2.5, bias=-1.0, symmetric=symmetric)
  got = _run(fn, jit, Q, DV, VALID)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, _sigmoid_ref(Q, DV, VALID, 2.5, -1.0, symmetric),
                             rtol=1e-5, atol=1e-6)


def test_qic_sigmoid_literal_value():
  # Orthogonal unit vectors, scale 1, bias 0: all logits 0 except the diagonal (1) -> per row
  # mean of log(1 + e^-1) and (B - 1) times log 2.
  eye = np.eye(3, dtype=np.float32)
  expected = (math.log1p(math.exp(-1.0)) + 2 * math.log(2.0)) / 3
  np.testing.assert_allclose(contrastive.qic_sigmoid(eye, eye, np.ones((3, 3), bool)),
                             [expected] * 3, rtol=1e-6)


@JIT
@SYM
def test_qic_softmax_matches_reference(jit, symmetric):
  fn = functools.partial(contrastive.qic_softmax, temperature=0.3, symmetric=symmetric)
  got = _run(fn, jit, Q, DV, VALID)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, _softmax_ref(Q, DV, VALID, 0.3, symmetric),
                             rtol=1e-5, atol=1e-6)


def test_qic_softmax_literal_value():
  # Identity similarities, τ = 1: row loss = log(e + (B - 1)) - 1 over all B columns.
  eye = np.eye(3, dtype=np.float32)
  np.testing.assert_allclose(contrastive.qic_softmax(eye, eye, np.ones((3, 3), bool),
                                                     temperature=1.0),
                             [math.log(math.e + 2) - 1] * 3, rtol=1e-6)
  # With only the diagonal valid, the loss is exactly 0.
  np.testing.assert_allclose(contrastive.qic_softmax(eye, eye, np.zeros((3, 3), bool),
                                                     temperature=1.0), [0.0] * 3, atol=1e-7)


@JIT
@SYM
def test_qic_am_softmax_matches_reference(jit, symmetric):
  fn = functools.partial(contrastive.qic_am_softmax, scale=10.0, margin=0.3, symmetric=symmetric)
  got = _run(fn, jit, Q, DV, VALID)
  assert got.shape == (B,)
  np.testing.assert_allclose(got, _am_softmax_ref(Q, DV, VALID, 10.0, 0.3, symmetric),
                             rtol=1e-5, atol=1e-5)


@SYM
def test_am_softmax_margin_zero_is_softmax_with_temperature_one_over_scale(symmetric):
  s = 16.0
  am = contrastive.qic_am_softmax(Q, DV, VALID, scale=s, margin=0.0, symmetric=symmetric)
  sm = contrastive.qic_softmax(_unit(Q), _unit(DV), VALID, temperature=1 / s, symmetric=symmetric)
  np.testing.assert_allclose(am, sm, rtol=1e-5, atol=1e-6)
  # AM-Softmax normalises its inputs: their norms do not matter.
  scaled = contrastive.qic_am_softmax(7.0 * Q, 0.01 * DV, VALID, scale=s, margin=0.0,
                                      symmetric=symmetric)
  np.testing.assert_allclose(scaled, am, rtol=1e-5, atol=1e-6)


def test_am_softmax_margin_raises_loss():
  base = contrastive.qic_am_softmax(Q, DV, VALID, scale=10.0, margin=0.0)
  with_margin = contrastive.qic_am_softmax(Q, DV, VALID, scale=10.0, margin=0.35)
  assert np.all(np.asarray(with_margin) > np.asarray(base))


QIC_FNS = {
    'sigmoid': functools.partial(contrastive.qic_sigmoid, scale=3.0, bias=-0.5),
    'softmax': functools.partial(contrastive.qic_softmax, temperature=0.2),
    'am_softmax': functools.partial(contrastive.qic_am_softmax, scale=20.0, margin=0.25),
}


@pytest.mark.parametrize('name', sorted(QIC_FNS))
@pytest.mark.parametrize('value', [-1e4, 0.0, 1e4, 'query0'])
def test_qic_invalid_column_does_not_change_the_loss(name, value):
  # Column 2 holds row 0's item (a duplicate): whatever item 2 is -- even the strongest possible
  # distractor, a copy of query 0 -- row 0's loss stays the same.
  fn = QIC_FNS[name]
  base = np.asarray(fn(Q, DV, VALID))
  other = DV.copy()
  other[2] = 5 * Q[0] if value == 'query0' else value
  got = np.asarray(fn(Q, other, VALID))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got[0], base[0], rtol=1e-6)
  # Control: row 1 counts column 2, so a hard negative there raises its loss.
  other[2] = 5 * Q[1]
  assert np.asarray(fn(Q, other, VALID))[1] > base[1] + 1e-3


@pytest.mark.parametrize('name', sorted(QIC_FNS))
def test_qic_valid_diagonal_is_forced(name):
  # The positive always counts, even if the caller's mask leaves the diagonal out.
  fn = QIC_FNS[name]
  no_diag = VALID & ~np.eye(B, dtype=bool)
  np.testing.assert_allclose(fn(Q, DV, no_diag), fn(Q, DV, VALID), rtol=1e-6)


def test_qic_extreme_similarities_stay_finite():
  big = np.eye(B, D, dtype=np.float32) * 1e2  # dot products up to 1e4
  flip = -big
  for fn in (functools.partial(contrastive.qic_sigmoid, scale=1.0),
             functools.partial(contrastive.qic_softmax, temperature=1.0),
             functools.partial(contrastive.qic_am_softmax, scale=1e4, margin=0.5)):
    for d in (big, flip):
      value, grads = jax.jit(jax.value_and_grad(lambda q, d: fn(q, d, VALID).sum(), (0, 1)))(
          big, d)
      assert np.isfinite(value)
      assert all(np.all(np.isfinite(g)) for g in grads)
  # Anti-aligned positive at similarity -1e4 costs ~1e4 under the sigmoid loss (not inf).
  got = contrastive.qic_sigmoid(big[:1], flip[:1], np.ones((1, 1), bool))
  np.testing.assert_allclose(got, [1e4], rtol=1e-6)


# -- QIM ---------------------------------------------------------------------------------------


@JIT
def test_qim_bce_matches_reference(jit):
  logits = np.array([[2.0, -1.0], [0.5, 3.0], [-4.0, 0.0]], np.float32)
  labels = np.array([[1, 0], [1, 0], [0.3, 1]], np.float32)
  weights = np.array([[1, 1], [1, 0], [0, 0]], np.float32)
  got = _run(contrastive.qim_bce, jit, logits, labels)
  np.testing.assert_allclose(got, _qim_ref(logits, labels), rtol=1e-5)
  got_w = _run(contrastive.qim_bce, jit, logits, labels, weights)
  np.testing.assert_allclose(got_w, _qim_ref(logits, labels, weights), rtol=1e-5)
  assert got_w[2] == 0.0


def test_qim_bce_literal_and_extreme_values():
  # Logit 0: BCE = log 2 whatever the label.
  np.testing.assert_allclose(contrastive.qim_bce(np.zeros((1, 2), np.float32),
                                                 np.array([[1., 0.]])), [math.log(2.0)])
  logits = np.array([[1e4, -1e4], [-1e4, 1e4]], np.float32)
  labels = np.array([[1., 0.], [1., 0.]], np.float32)
  got, grad = jax.value_and_grad(lambda z: contrastive.qim_bce(z, labels).sum())(logits)
  np.testing.assert_allclose(contrastive.qim_bce(logits, labels), [0.0, 1e4], rtol=1e-6, atol=0)
  assert np.isfinite(got) and np.all(np.isfinite(grad))


# -- zero weights, extreme logits --------------------------------------------------------------


def test_zero_weights_give_zero_loss_and_finite_gradients():
  logits = _RNG.normal(size=(2, 3, 5)).astype(np.float32)
  labels = np.zeros((2, 3), np.int32)
  zeros = np.zeros((2, 3), np.float32)
  log_probs = np.array(jax.nn.log_softmax(logits, -1))
  targets = np.full((2, 3, 5), 0.2, np.float32)
  cases = [
      (lambda x: token.masked_lm(x, labels, zeros), logits),
      (lambda x: token.masked_patch_kl(x, targets, zeros), log_probs),
      (lambda x: contrastive.qim_bce(x, np.ones((2, 3)), zeros), logits[:, :, 0]),
  ]
  for fn, x in cases:
    value = np.asarray(fn(x))
    np.testing.assert_array_equal(value, np.zeros(2))
    grad = np.asarray(jax.grad(lambda x: fn(x).sum())(x))
    np.testing.assert_array_equal(grad, np.zeros_like(grad))
  # A -inf log-probability in a padding slot does not leak into the value.
  log_probs[0, 2, :] = -np.inf
  w = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  assert np.all(np.isfinite(token.masked_patch_kl(log_probs, targets, w)))


def test_masked_lm_extreme_logits_stay_finite():
  logits = np.zeros((1, 2, 4), np.float32)
  logits[0, 0, 1] = 1e4   # the label's logit is huge: CE ~ 0
  logits[0, 1, 2] = 1e4   # another token's logit is huge: CE ~ 1e4 (label 0 at -1e4 below)
  logits[0, 1, 0] = -1e4
  labels = np.array([[1, 0]], np.int32)
  weights = np.ones((1, 2), np.float32)
  value, grad = jax.value_and_grad(lambda x: token.masked_lm(x, labels, weights).sum())(logits)
  np.testing.assert_allclose(value, 0.5 * (0.0 + 2e4), rtol=1e-6)
  assert np.all(np.isfinite(grad))


# -- gradient checks (float64) -----------------------------------------------------------------


def _grad_check(fn, *args):
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) for a in args]
    # jit: check_grads evaluates fn many times at one shape; compile once instead of dispatching.
    test_util.check_grads(jax.jit(fn), args, order=1, modes=['rev'], atol=1e-6, rtol=1e-6)


def test_gradients_token_losses():
  rng = np.random.default_rng(1)
  labels = np.array([[1, 4, 0], [2, 2, 3]], np.int32)
  weights = np.array([[1, 0, 1], [1, 1, 0.5]])
  _grad_check(lambda x: token.masked_lm(x, labels, weights), rng.normal(size=(2, 3, 5)))
  targets = np.array([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
  _grad_check(lambda x: token.masked_patch_kl(jax.nn.log_softmax(x, -1), targets,
                                              np.array([[1.0, 1.0], [0.0, 1.0]])),
              rng.normal(size=(2, 2, 3)))


@SYM
@pytest.mark.parametrize('name', sorted(QIC_FNS))
def test_gradients_qic(name, symmetric):
  rng = np.random.default_rng(2)
  fn = functools.partial(QIC_FNS[name], symmetric=symmetric)
  _grad_check(lambda q, d: fn(q, d, VALID), rng.normal(size=(B, D)), rng.normal(size=(B, D)))


def test_gradients_qim():
  rng = np.random.default_rng(3)
  labels = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]])
  _grad_check(lambda z: contrastive.qim_bce(z, labels), rng.normal(size=(3, 2)))
  _grad_check(lambda z: contrastive.qim_bce(z, labels, np.array([[1, 0.5], [0, 1], [1, 1]])),
              rng.normal(size=(3, 2)))


# -- logQ correction ------------------------------------------------------------------------------

LOG_Q = np.log(np.array([0.5, 0.1, 0.3, 0.1], np.float32))


@SYM
def test_qic_softmax_logq_matches_reference(symmetric):
  got = contrastive.qic_softmax(Q, DV, VALID, temperature=0.3, symmetric=symmetric,
                                log_q=LOG_Q)
  logits = np.array([[float(Q[i] @ DV[j]) / 0.3 - LOG_Q[j] for j in range(B)]
                     for i in range(B)])
  np.testing.assert_allclose(got, _softmax_rows_ref(logits, VALID, symmetric),
                             rtol=1e-5, atol=1e-6)


def test_qic_am_softmax_logq_matches_reference():
  got = contrastive.qic_am_softmax(Q, DV, VALID, scale=10.0, margin=0.3, log_q=LOG_Q)
  logits = np.zeros((B, B))
  for i in range(B):
    for j in range(B):
      cos = float(Q[i] @ DV[j]) / (np.linalg.norm(Q[i]) * np.linalg.norm(DV[j]))
      logits[i, j] = 10.0 * (cos - (0.3 if i == j else 0.0)) - LOG_Q[j]
  np.testing.assert_allclose(got, _softmax_rows_ref(logits, VALID), rtol=1e-5, atol=1e-6)


def test_qic_logq_uniform_is_no_correction_and_popular_negatives_weigh_less():
  uniform = np.full(B, np.log(1 / B), np.float32)
  for fn in (functools.partial(contrastive.qic_softmax, temperature=0.3),
             functools.partial(contrastive.qic_am_softmax, scale=10.0, margin=0.3)):
    np.testing.assert_allclose(fn(Q, DV, VALID, log_q=uniform), fn(Q, DV, VALID), rtol=1e-6)
  # A popular (high-q) negative contributes less: row 1's loss falls as item 0 gets popular.
  low = contrastive.qic_softmax(Q, DV, VALID, temperature=0.3, log_q=np.log([.1, .3, .3, .3]))
  high = contrastive.qic_softmax(Q, DV, VALID, temperature=0.3, log_q=np.log([.7, .1, .1, .1]))
  assert high[1] < low[1]


def test_qic_logq_gradient_matches_finite_differences():
  log_q = np.asarray(LOG_Q, np.float64)
  _grad_check(lambda q, d: contrastive.qic_am_softmax(q, d, VALID, scale=10.0, margin=0.3,
                                                     symmetric=True, log_q=log_q), Q, DV)
  _grad_check(lambda q, d: contrastive.qic_sigmoid(q, d, VALID, scale=2.0, log_q=log_q), Q, DV)
