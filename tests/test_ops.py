"""mmret.ops: the shared tensor helpers against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmret import ops


def test_l2_normalize_by_hand_and_at_zero():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]], jnp.float32)
  got = np.asarray(jax.jit(ops.l2_normalize)(x))
  # (3, 4) / 5; a zero vector stays zero; below the floor the norm counts as NORM_FLOOR.
  np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [1e-8 / ops.NORM_FLOOR, 0.0]],
                             rtol=1e-6)
  grad = jax.grad(lambda v: ops.l2_normalize(v).sum())(jnp.zeros((3,), jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_l2_normalize_dtypes():
  assert ops.l2_normalize(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32
  with jax.enable_x64(True):  # float64 stays float64 (gradient checks rely on it)
    x64 = jnp.array([[1.0, 2.0, 2.0]], jnp.float64)
    out = ops.l2_normalize(x64)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), np.asarray(x64) / 3.0, rtol=1e-12)


def test_masked_means():
  x = jnp.arange(12, dtype=jnp.float32).reshape(2, 3, 2)
  mask = jnp.array([[True, False, True], [False, False, False]])
  np.testing.assert_allclose(np.asarray(ops.masked_mean(x, mask)), [[2.0, 3.0], [0.0, 0.0]])
  values = jnp.array([1.0, 2.0, 6.0])
  assert float(ops.masked_average(values, jnp.array([True, False, True]))) == 3.5
  assert float(ops.masked_average(values, jnp.zeros(3, bool))) == 0.0


@pytest.mark.parametrize('n, multiple, expected', [(0, 8, 0), (1, 8, 8), (8, 8, 8),
                                                   (30522, 128, 30592), (5, 0, 5)])
def test_padded_size(n, multiple, expected):
  assert ops.padded_size(n, multiple) == expected
