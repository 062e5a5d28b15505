"""The recall objective: sampled softmax, plus the gated fusion's view losses and triplet
(DESIGN.md §2-3). Masks, weights and reduces the per-example losses of mmret.losses."""

import jax
import jax.numpy as jnp
import ml_collections

from mmret.losses import sampled_softmax
from mmret.losses import triplet
from mmret.ops import l2_normalize, masked_average
from mmret.towers import recall as recall_model


def recall_objective(out: dict[str, jax.Array], batch: dict[str, jax.Array],
                     loss: ml_collections.ConfigDict, fusion: str,
                     dropped: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masks, weights and reduces the per-example losses -> (scalar, metrics).

  out: RecallModel outputs over items = B*P positives (row-major) followed by S negatives.
  Gated fusion adds the Guangguang base losses: each view (ID, content) against the query
  tower, and the triplet loss between an item's two views (negative: a sampled item's content).
  dropped: bool [B*P + S], the cold-dropout mask (None: no dropout). The main loss keeps every
  occurrence; the ID-view loss and the triplet leave out dropped positives.
  """
  mask = batch['positive_mask']
  b, p = mask.shape
  weight = mask.astype(jnp.float32)
  denom = jnp.maximum(weight.sum(), 1.0)
  hits = sampled_softmax.accidental_hits(batch['positives'], mask, batch['negatives'])
  log_q = {}
  if loss.logq_correction:
    log_q = dict(positive_log_q=batch['positive_log_q'], negative_log_q=batch['negative_log_q'])

  def softmax_loss(query, items, weight=weight, denom=denom):
    pos = items[:b * p].reshape(b, p, -1)
    per = sampled_softmax.sampled_softmax_loss(query, pos, items[b * p:],
                                               temperature=loss.temperature, hits=hits, **log_q)
    return jnp.sum(per * weight) / denom

  main = softmax_loss(out['query_vec'], out['item_vec'])
  metrics = {'loss/softmax': main}
  total = main
  m = b * p
  kept = mask  # positives whose ID input is their own row
  if dropped is not None:
    kept = mask & ~dropped[:m].reshape(b, p)
    metrics['train/cold_dropout_rate'] = jnp.mean(dropped.astype(jnp.float32))
  if recall_model.is_gated(fusion):
    q = out['query_base']
    id_view = l2_normalize(out['id_view'])
    content = l2_normalize(out['content_view'])
    if dropped is None:
      metrics['loss/id_view'] = softmax_loss(q, id_view)
    else:
      kept_weight = kept.astype(jnp.float32)
      metrics['loss/id_view'] = softmax_loss(q, id_view, kept_weight,
                                             jnp.maximum(kept_weight.sum(), 1.0))
    metrics['loss/content_view'] = softmax_loss(q, content)
    # Triplet: anchor = a positive's ID view, positive = its content view, negative = the
    # content view of one of the step's sampled items (unless it is the same item).
    s = batch['negatives'].shape[0]
    pick = jnp.arange(m) % s
    flat_pos = batch['positives'].reshape(-1)
    valid = kept.reshape(-1) & (batch['negatives'][pick] != flat_pos)
    per = triplet.triplet_margin_loss(id_view[:m], content[:m], content[m:][pick],
                                      margin=loss.triplet_margin)
    metrics['loss/triplet'] = masked_average(per, valid)
    total = total + loss.view_weight * (metrics['loss/id_view'] + metrics['loss/content_view'])
    total = total + loss.triplet_weight * metrics['loss/triplet']
    metrics['train/gate_mean'] = jnp.sum(out['gate'][:m, 0] * mask.reshape(-1)) / denom
    if dropped is not None:  # the gate on the positives presented as cold
      metrics['train/gate_mean_dropped'] = masked_average(out['gate'][:m, 0],
                                                          mask.reshape(-1) & dropped[:m])
  metrics['loss/total'] = total
  return total, metrics
