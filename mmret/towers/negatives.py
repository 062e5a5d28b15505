"""In-batch hard negatives for QIM / QIM2 (DESIGN.md §1, task 4).

For each query (row) the negative is the in-batch item most similar to it under the QIC
similarity that is not a positive for it. Because a batch may hold the same item more than once
(two queries clicking one item) or the same query more than once, positives are defined by
identity, not by the diagonal: item j is a positive for row i when item_index[j] == item_index[i]
or query_index[j] == query_index[i]. Selection runs under
stop_gradient: it chooses which pair to score, it is not itself trained.
"""

import jax
import jax.numpy as jnp


def positive_mask(item_index: jax.Array, query_index: jax.Array | None = None) -> jax.Array:
  """item_index int [B] -> bool [B, B], True where column j holds row i's item.

  With query_index int [B] (-1 = unknown), also True where column j's pair has row i's query:
  an item clicked for the same query is no negative for it.
  """
  same = item_index[:, None] == item_index[None, :]
  if query_index is not None:
    same |= (query_index[:, None] == query_index[None, :]) & (query_index[:, None] >= 0)
  return same


def hardest_negative(sim: jax.Array, positive_mask: jax.Array) -> jax.Array:
  """Column of the most similar non-positive item per row.

  Args:
    sim: float [B, B] query (row) x item (column) similarities.
    positive_mask: bool [B, B], True for positives (never chosen).
  Returns:
    int32 [B]. A row whose columns are all positives gets its argmax over all columns (a
    positive); `has_negative` tells the caller which rows are affected.
  """
  sim = jax.lax.stop_gradient(sim).astype(jnp.float32)
  masked = jnp.where(positive_mask, -jnp.inf, sim)
  fallback = jnp.argmax(sim, axis=1)
  chosen = jnp.argmax(masked, axis=1)
  return jnp.where(has_negative(positive_mask), chosen, fallback).astype(jnp.int32)


def has_negative(positive_mask: jax.Array) -> jax.Array:
  """bool [B]: whether row i has at least one non-positive column."""
  return jnp.any(~positive_mask, axis=1)
