"""Rows of several shared-encoder passes in one encoder call (model.single_call).

A pass's inputs are `Rows`: embeddings x [R, L, D], type ids int [R, L], positions int [R, L]
and an attention mask, bool [R, L] (valid keys) or [R, L, L] (query x key pairs, e.g. the
block-diagonal mask of packed segments). `concat` pads every part to the longest L with masked
slots and concatenates the parts along the batch, key masks turned into pair masks, so that one
encoder call computes what the separate calls compute: a padded slot is never a valid key, and
its own output (a query that attends to no valid key: finite, see
mmret.encoders.transformer.attention_weights) is sliced away by `split`, so it gets no gradient.

Why: each encoder call is its own stack of layers in the compiled step (forward and backward);
one call instead of two is less for XLA to compile, at the cost of the padded slots' FLOPs
(docs/PERFORMANCE.md, issue 12).
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Rows(NamedTuple):
  x: jax.Array          # [R, L, D]
  types: jax.Array      # int [R, L]
  positions: jax.Array  # int [R, L]
  mask: jax.Array       # bool [R, L] (keys) or [R, L, L] (pairs)


def pair_mask(mask: jax.Array, length: int) -> jax.Array:
  """bool [R, L] (keys) or [R, L, L] (pairs) -> bool [R, length, length], the new slots masked
  as keys and attending to nothing as queries."""
  r, l = mask.shape[:2]
  if mask.ndim == 2:
    mask = jnp.broadcast_to(mask[:, None, :], (r, l, l))
  return jnp.pad(mask, [(0, 0), (0, length - l), (0, length - l)])


def pad(rows: Rows, length: int) -> Rows:
  """`rows` with L padded to `length` (masked slots, type and position 0) and a pair mask."""
  extra = length - rows.x.shape[1]
  if extra < 0:
    raise ValueError(f'cannot pad rows of length {rows.x.shape[1]} to {length}')
  widen = lambda a: jnp.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2))
  return Rows(widen(rows.x), widen(rows.types), widen(rows.positions),
              pair_mask(rows.mask, length))


def concat(parts: Sequence[Rows]) -> Rows:
  """Every part padded to the longest and concatenated along the batch: [sum R_i, max L_i]."""
  length = max(p.x.shape[1] for p in parts)
  padded = [pad(p, length) for p in parts]
  return Rows(*(jnp.concatenate(fields) for fields in zip(*padded)))


def split(hidden: jax.Array, parts: Sequence[Rows]) -> list[jax.Array]:
  """The encoder's output [sum R_i, max L_i, D] of `concat(parts)` -> per part [R_i, L_i, D]."""
  out, start = [], 0
  for p in parts:
    r, l = p.x.shape[:2]
    out.append(hidden[start:start + r, :l])
    start += r
  return out
