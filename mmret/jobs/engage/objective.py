"""The Que2Engage objective: lambda_1 * L_relevance + lambda_2 * L_engagement (DESIGN.md §4).

Weights, masks and reduces the per-example losses of `mmret.losses.engagement` over a page batch
and returns `(scalar, metrics)` with namespaced keys.

Candidates of the relevance softmax:
  mixed_negatives=False  in-batch only: every row's engaged item (slot 0), B columns;
  mixed_negatives=True   in-batch plus every page negative of the batch, B * G columns (the
                         "mixed batch" of the source: random in-batch negatives and the hard
                         impressed-but-not-engaged ones).
Columns repeating a row's own positive item, other rows' engaged items for the same query and
padding slots are left out (candidate_mask).
Engagement BCE: every valid (query, impressed item) pair of the row: slot 0 with label 1, the
page negatives with label 0.
"""

import jax
import jax.numpy as jnp
import ml_collections

from mmret.losses import engagement as losses
from mmret.ops import masked_average


def engage_objective(out: dict[str, jax.Array], batch: dict[str, jax.Array],
                     loss: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """out: query_vec [B, E], doc_vec [B, G, E] (L2-normalised). batch: item_index [B, G],
  query_index [B], doc_mask bool [B, G], engaged float [B, G]. Returns (scalar loss, metrics)."""
  q, d = out['query_vec'], out['doc_vec']
  b, g, _ = d.shape
  item = batch['item_index']
  doc_mask = jnp.asarray(batch['doc_mask'], bool)
  query = batch['query_index']  # [B], -1 = unknown
  if loss.mixed_negatives:
    cand = d.reshape(b * g, -1)
    cand_item, cand_valid = item.reshape(-1), doc_mask.reshape(-1)
    positive_column = jnp.arange(b) * g
    # Slot 0 was engaged for the row's query; the page negatives were not engaged at all.
    cand_query = jnp.where(jnp.arange(g)[None, :] == 0, query[:, None], -1).reshape(-1)
  else:
    cand, cand_item, cand_valid = d[:, 0], item[:, 0], doc_mask[:, 0]
    positive_column = jnp.arange(b)
    cand_query = query
  cos = jnp.einsum('be,ne->bn', q, cand, preferred_element_type=jnp.float32)   # [B, N]
  where = losses.candidate_mask(item[:, 0], cand_item, cand_valid, positive_column, query,
                                cand_query)
  relevance = losses.relevance_loss(cos, positive_column, scale=loss.scale, where=where)  # [B]

  pair_cos = jnp.einsum('be,bge->bg', q, d, preferred_element_type=jnp.float32)  # [B, G]
  bce = losses.engagement_loss(pair_cos, batch['engaged'], scale=loss.scale)      # [B, G]
  w = doc_mask.astype(jnp.float32)
  engagement = masked_average(bce, w)

  l_rel = jnp.mean(relevance)
  total = loss.weights.relevance * l_rel + loss.weights.engagement * engagement
  masked = jnp.where(where, cos, -jnp.inf)
  neg_w = w.at[:, 0].set(0.0)
  metrics = {
      'loss/total': total, 'loss/relevance': l_rel, 'loss/engagement': engagement,
      'train/accuracy': jnp.mean(jnp.argmax(masked, axis=1) == positive_column),
      'train/positive_cos': jnp.mean(pair_cos[:, 0]),
      'train/page_negative_cos': masked_average(pair_cos, neg_w),
  }
  for name in ('text', 'image', 'context'):
    if f'keep_{name}' in out:
      metrics[f'train/keep_{name}'] = jnp.mean(out[f'keep_{name}'].astype(jnp.float32))
  return total, metrics
