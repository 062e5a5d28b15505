"""Hashed EmbeddingBag (mean mode): the query tower's character-trigram encoder (DESIGN.md §4).

ids int [B, T] (hashed trigram buckets, 0 = padding; `mmret.data.tokenizer.char_trigram_ids`),
mask bool [B, T] -> the mean of the valid rows' embeddings [B, D] (zeros for an empty bag).
The table's rows carry the logical axis `vocab`, so a `model` mesh axis can split it as it
splits the word embeddings.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmret.ops import logical


class EmbeddingBag(nn.Module):
  """num_buckets: rows of the table (bucket 0 = padding, never trained). features: D."""
  num_buckets: int
  features: int

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    table = self.param('embedding', logical(nn.initializers.normal(stddev=0.02),
                                            ('vocab', 'embed')), (self.num_buckets, self.features))
    rows = jnp.take(table, ids, axis=0)                      # [B, T, D]
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(rows * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
