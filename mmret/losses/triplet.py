"""Triplet margin loss between two views of the same item (Guangguang base model, DESIGN.md §3).

The behaviour (ID) tower and the content tower describe the same item; the triplet loss pulls
an item's two views together and pushes its behaviour view away from another item's content
view (Schroff et al. 2015, FaceNet):

  l = max(0, margin + d(anchor, positive) - d(anchor, negative)),
  d(x, y) = ||x/|x| - y/|y|||^2 = 2 - 2 cos(x, y)

Cosine-based distances keep the margin meaningful whatever the towers' norms.
"""

import jax
import jax.numpy as jnp

from mmret.ops import l2_normalize


def triplet_margin_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array, *,
                        margin: float = 0.5) -> jax.Array:
  """anchor, positive, negative float [N, D] -> float [N] per-triplet hinge losses."""
  a, p, n = l2_normalize(anchor), l2_normalize(positive), l2_normalize(negative)
  d_pos = jnp.sum(jnp.square(a - p), axis=-1)
  d_neg = jnp.sum(jnp.square(a - n), axis=-1)
  return jax.nn.relu(margin + d_pos - d_neg)
