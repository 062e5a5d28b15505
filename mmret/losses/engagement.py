"""Que2Engage losses (DESIGN.md §4; Que2Engage, Facebook Marketplace, 2023): per example, optax
style (no reduction; `mmret/jobs/engage/objective.py` weights, masks and reduces).

  L_relevance: softmax cross-entropy over the scaled cosine similarities s * cos(q_i, d_j) of a
    query against a candidate set of documents, its engaged document being the label. With
    mixed negatives the candidates are the in-batch documents (the other rows' engaged items)
    plus the impressed-but-not-engaged documents of the batch's pages.
  L_engagement: binary cross-entropy of the engagement label y on sigma(s * cos(q, d)), in the
    stable log-sigmoid form: -(y log sigma(z) + (1 - y) log sigma(-z)), z = s * cos.

The paper's s = 20 (as in Que2Search): cosines in [-1, 1] become logits in [-20, 20].
"""

import jax
import jax.numpy as jnp
import optax

DEFAULT_SCALE = 20.0


def _dtype(x: jax.Array):
  # At least float32 (bf16 cosines lose the small logit differences), float64 kept (tests).
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def candidate_mask(positive_item: jax.Array, candidate_item: jax.Array,
                   candidate_valid: jax.Array, positive_column: jax.Array,
                   query_index: jax.Array | None = None,
                   candidate_query: jax.Array | None = None) -> jax.Array:
  """Which candidate columns a row's softmax ranges over.

  Args:
    positive_item: int [B], catalog index of each row's engaged item.
    candidate_item: int [N], catalog index of each candidate column.
    candidate_valid: bool [N], False for padding slots (a page with fewer hard negatives).
    positive_column: int [B], the column holding row i's own positive.
    query_index: optional int [B], each row's query (-1 = unknown).
    candidate_query: optional int [N], the query a column was *engaged* for (-1 for page
      negatives, which were impressed and not engaged, so they stay negatives).
  Returns:
    bool [B, N]: valid columns whose item differs from the row's positive, plus the row's own
    positive column. A column repeating the row's positive item (the same item engaged in two
    rows, or impressed twice) is neither positive nor negative, so it is left out; so is
    (with query_index) another row's engaged item for the same query: a positive of that query
    too (popular queries recur within a batch), not a negative.
  """
  different = positive_item[:, None] != candidate_item[None, :]
  if query_index is not None and candidate_query is not None:
    same_query = ((query_index[:, None] == candidate_query[None, :])
                  & (query_index[:, None] >= 0))
    different &= ~same_query
  own = jnp.arange(candidate_item.shape[0])[None, :] == positive_column[:, None]
  return (different & candidate_valid[None, :]) | own


def relevance_loss(cos: jax.Array, positive_column: jax.Array, *, scale: float = DEFAULT_SCALE,
                   where: jax.Array | None = None) -> jax.Array:
  """Softmax over s * cos with the positive's column as label.

  Args:
    cos: float [B, N] cosine similarity of query i and candidate document j.
    positive_column: int [B], index in [0, N) of row i's engaged document.
    scale: s.
    where: optional bool [B, N], the candidates of each row (`candidate_mask`); the positive
      column must be among them.
  Returns:
    float [B] (>= float32): -log softmax(s * cos_i)[positive_column_i].
  """
  logits = scale * cos.astype(_dtype(cos))
  return optax.softmax_cross_entropy_with_integer_labels(logits, positive_column, axis=-1,
                                                         where=where)


def engagement_loss(cos: jax.Array, labels: jax.Array, *, scale: float = DEFAULT_SCALE
                    ) -> jax.Array:
  """Binary cross-entropy of the engagement label on sigma(s * cos).

  Args:
    cos: float [...] cosine similarity of a (query, impressed document) pair.
    labels: float [...] in [0, 1], 1 = engaged.
    scale: s.
  Returns:
    float [...] (>= float32): -(y log sigma(s cos) + (1 - y) log sigma(-s cos)).
  """
  z = scale * cos.astype(_dtype(cos))
  y = labels.astype(z.dtype)
  return -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
