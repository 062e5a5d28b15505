"""ID embedding tables: created row-sharded, looked up under jit.

A table is a plain `[rows, dim]` jax.Array whose rows are split across devices by the logical
axis rules of the config: its logical axes are `TABLE_AXES = ('ids', 'embed')`, and a rule such as
`('ids', 'data')` puts 1/n of the rows on each of the n devices of the `data` mesh axis. Tables are
created by a jitted init with `out_shardings`, so no device ever holds a full copy (DESIGN.md §6:
10^8-10^9 rows in production). Row counts are padded to a multiple of the shard count.

Lookups are plain gathers under jit; XLA's SPMD partitioner turns a gather from a row-sharded
table into per-shard gathers plus a reduction, so the cost follows the number of rows looked up.
Rows outside the table (the `sentinel` = rows of the table) read as zeros: they mark padding.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmret.ops import padded_size

TABLE_AXES = ('ids', 'embed')  # [rows, dim]
ROW_AXES = ('ids',)            # [rows], per-row optimizer slots and frozen per-row values


def row_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a per-row array with `ndim` dims: rows by the 'ids' rule, the rest replicated."""
  axes = TABLE_AXES if ndim == 2 else ROW_AXES + (None,) * (ndim - 1)
  return nn.logical_to_mesh_sharding(P(*axes[:ndim]), mesh, rules)


def shard_count(sharding: NamedSharding) -> int:
  """Number of pieces the rows are split into."""
  axis = sharding.spec[0] if len(sharding.spec) else None
  if axis is None:
    return 1
  axes = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def create_table(rng: jax.Array, num_rows: int, dim: int, sharding: NamedSharding, *,
                 scale: float = 0.05, dtype=jnp.float32) -> jax.Array:
  """float [padded rows, dim] ~ N(0, scale^2), created directly in its row-sharded layout."""
  rows = padded_size(num_rows, shard_count(sharding))
  init = jax.jit(lambda key: (scale * jax.random.normal(key, (rows, dim))).astype(dtype),
                 out_shardings=sharding)
  return init(rng)


def zeros(shape: Sequence[int], sharding: NamedSharding, dtype=jnp.float32) -> jax.Array:
  """Zeros created in `sharding` (optimizer slots of a table)."""
  return jax.jit(lambda: jnp.zeros(tuple(shape), dtype), out_shardings=sharding)()


def put_rows(values: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array of per-row values [N, ...] -> a row-sharded device array, rows padded with 0.

  Each device receives only its own slice (make_array_from_callback), never the whole array.
  """
  values = np.asarray(values)
  rows = padded_size(values.shape[0], shard_count(sharding))
  if rows != values.shape[0]:
    pad = [(0, rows - values.shape[0])] + [(0, 0)] * (values.ndim - 1)
    values = np.pad(values, pad)
  return jax.make_array_from_callback(values.shape, sharding, lambda idx: values[idx])


def lookup(table: jax.Array, rows: jax.Array) -> jax.Array:
  """table [N, D], rows int [...] -> [..., D]; rows outside [0, N) read as zeros."""
  return jnp.take(table, rows, axis=0, mode='fill', fill_value=0)
