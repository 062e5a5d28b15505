"""Sampled softmax with logQ correction and accidental-hit masking, several positives per row.

DESIGN.md §2 (Taobao stage 2): a training example is a clicked page with up to P = 3 clicked
items; one set of S negatives (~10k) per step is drawn from the click distribution q over the
whole catalog and shared by every row. For row b and its positive p the loss is the softmax
cross-entropy of the positive against the shared negatives:

  l[b, p] = -s(b, pos_p) + logsumexp({s(b, pos_p)} ∪ {s(b, neg_j) : j not a hit of row b})
  s(b, x) = <query_b, x> / temperature - log q(x)

The logQ term (Jean et al. 2015; Yi et al. 2019) makes the sampled softmax estimate the full
softmax although popular items are drawn as negatives far more often. A negative that is one of
the row's own positives ("accidental hit") is left out of that row's denominator: pushing it down
would push down a clicked item. The row's other positives are not in the denominator either.

Returns one value per (row, positive); the objective masks and reduces (optax style).
"""

import jax
import jax.numpy as jnp


def accidental_hits(positive_ids: jax.Array, positive_mask: jax.Array,
                    negative_ids: jax.Array) -> jax.Array:
  """positive_ids int [B, P], positive_mask bool [B, P], negative_ids int [S] -> bool [B, S]:
  True where negative j is one of row b's (valid) positives."""
  same = positive_ids[:, :, None] == negative_ids[None, None, :]
  return jnp.any(same & positive_mask[:, :, None], axis=1)


def sampled_softmax_loss(query: jax.Array, positives: jax.Array, negatives: jax.Array, *,
                         temperature: float = 1.0,
                         positive_log_q: jax.Array | None = None,
                         negative_log_q: jax.Array | None = None,
                         hits: jax.Array | None = None) -> jax.Array:
  """Per-positive sampled softmax cross-entropy.

  Args:
    query: float [B, D] query vectors.
    positives: float [B, P, D] the rows' positive item vectors.
    negatives: float [S, D] the step's shared negative item vectors.
    temperature: tau; scores are dot products / tau.
    positive_log_q, negative_log_q: float [B, P], [S]: log sampling probability of each item
      (None: no correction). No gradient flows into them.
    hits: bool [B, S], True where negative j must not count for row b (accidental_hits).

  Returns:
    float [B, P] losses; padded positives are for the caller to mask.
  """
  pos = jnp.einsum('bd,bpd->bp', query, positives) / temperature
  neg = jnp.einsum('bd,sd->bs', query, negatives) / temperature
  if positive_log_q is not None:
    pos = pos - jax.lax.stop_gradient(positive_log_q.astype(pos.dtype))
  if negative_log_q is not None:
    neg = neg - jax.lax.stop_gradient(negative_log_q.astype(neg.dtype))[None, :]
  if hits is not None:
    neg = jnp.where(hits, -jnp.inf, neg)
  # logsumexp over {pos} ∪ negatives: the negatives' part is shared by all P positives.
  neg_lse = jax.nn.logsumexp(neg, axis=-1, keepdims=True)             # [B, 1]
  # A row whose negatives are all hits has neg_lse = -inf; logaddexp handles it (loss 0).
  return jnp.logaddexp(pos, neg_lse) - pos
