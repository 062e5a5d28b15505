"""Small tensor helpers every model, loss and objective shares (one definition each).

  logical(init, names)              an initialiser whose parameter carries logical axis names
  dense(features, names, ...)       nn.Dense with logical names on kernel and bias
  masked_mean(x, mask)              mean over valid positions of [B, L, D] -> [B, D]
  masked_average(values, mask)      mean of per-example values over the rows where mask holds
  l2_normalize(x)                   x / ||x|| along the last axis, finite at 0
  padded_size(n, multiple)          n rounded up to a multiple (shardable table sizes)
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT = nn.initializers.normal(stddev=0.02)


def logical(init: Callable, names: tuple[str | None, ...]) -> Callable:
  """`init` wrapped so that the parameter carries logical axis `names`."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, names: tuple[str, str], name: str, *, dtype=None,
          init: Callable = _INIT) -> nn.Dense:
  """nn.Dense whose kernel has logical axes `names` (in, out) and bias names[1:]."""
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=logical(init, names),
                  bias_init=logical(nn.initializers.zeros, names[1:]))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over valid positions. x [B, L, D], mask bool [B, L] -> float32 [B, D].

  A row without any valid position gives zeros (not NaN).
  """
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def masked_average(values: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(values * mask) / max(sum(mask), 1): the mean of per-example values [...] over the
  entries where mask [...] holds (0 when none does). What objectives reduce losses with."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# The floor of ||x|| in l2_normalize, for every vector mmret normalises (towers, losses).
NORM_FLOOR = 1e-6


def l2_normalize(x: jax.Array) -> jax.Array:
  """x [..., D] / max(||x||, NORM_FLOOR) along the last axis, in float32 at least (bfloat16
  inputs are upcast; float64 stays float64).

  One rsqrt of the floored squared norm: finite value and gradient for a zero vector.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True),
                                       NORM_FLOOR * NORM_FLOOR))


def padded_size(n: int, multiple: int) -> int:
  """n rounded up to a multiple of `multiple` (>= 1), e.g. a vocabulary or an ID table's rows
  so that a mesh axis splits them evenly."""
  multiple = max(int(multiple), 1)
  return -(-int(n) // multiple) * multiple
