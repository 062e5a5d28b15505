"""The stage-1 objective: the one place where its per-example losses are masked, reduced and
weighted (DESIGN.md §1).

`pretrain_objective(out, batch, loss)` takes the model's `out` dict (docs/ARCHITECTURE.md) and
the batch, and returns `(scalar_loss, metrics)` with namespaced metric keys (`loss/qic`,
`loss/mlm_query`, ...).
"""

import functools

import jax.numpy as jnp
import ml_collections

from mmret.losses import contrastive
from mmret.losses import token
from mmret.ops import masked_average


QIC_VARIANTS = ('sigmoid', 'softmax', 'am_softmax')  # config.loss.qic


def qic_per_example(query, item, valid, loss: ml_collections.ConfigDict, log_q=None,
                    negatives=None, negatives_valid=None):
  """QIC loss [B] for the configured variant (sigmoid < softmax < AM-Softmax in the source).

  log_q: optional [B] log click probability of each row's item, the logQ correction of the
  query->item direction (the item->query direction samples queries, not items: no correction).
  negatives [M, D] / negatives_valid [B, M]: optional judged negatives of each row's query,
  extra columns of the query->item direction (contrastive.judged_negatives_valid).
  """
  if loss.qic == 'sigmoid':
    fn = functools.partial(contrastive.qic_sigmoid, scale=loss.scale)
  elif loss.qic == 'softmax':
    fn = functools.partial(contrastive.qic_softmax, temperature=loss.temperature)
  else:
    fn = functools.partial(contrastive.qic_am_softmax, scale=loss.scale, margin=loss.margin)
  forward = fn(query, item, valid, log_q=log_q, negatives=negatives,
               negatives_valid=negatives_valid)
  if not loss.symmetric:
    return forward
  # item->query direction: the validity mask is symmetric (same item or same query).
  return 0.5 * (forward + fn(item, query, valid.T))


def _judged(out, batch, rows):
  """(negatives [B*H, D], valid [B, B*H]) of the rows' judged negatives, or (None, None)."""
  if 'qic_negatives' not in out:
    return None, None
  b = rows.shape[0]
  row_valid = batch['neg_valid'].reshape(b, -1) & rows[:, None]  # [B, H]
  return out['qic_negatives'], contrastive.judged_negatives_valid(row_valid)


def pretrain_objective(out, batch, loss: ml_collections.ConfigDict):
  """Stage-1 total loss = sum_k w_k * mean over examples where task k has a target.

  Args:
    out: model outputs (mlm_*, mpm_*, qic_*, qim*, see the model contract).
    batch: the pair batch; `item_index [B]` and `query_index [B]` mark duplicate items and
      queries for QIC; optional `valid [B]`.
    loss: config.loss (weights, qic variant, temperature, scale, margin, symmetric).
  Returns:
    (loss scalar, metrics dict of scalars).
  """
  rows = batch.get('valid', jnp.ones(batch['item_index'].shape, bool))
  valid = contrastive.similarity_valid_mask(batch['item_index'], batch.get('query_index'))
  valid = valid & rows[None, :] & rows[:, None] | jnp.eye(valid.shape[0], dtype=bool)
  qim_rows = rows & (out.get('qim_weights', jnp.ones_like(rows, jnp.float32)) > 0)
  # A task the model did not compute (its weight is 0: PretrainModel.tasks) has no outputs and
  # no loss; QIC is always computed.
  per_example = {}
  for name in ('mlm_query', 'mlm_title'):
    if f'{name}_logits' in out:
      per_example[name] = (
          token.masked_lm(out[f'{name}_logits'], out[f'{name}_labels'], out[f'{name}_weights']),
          rows & (out[f'{name}_weights'].sum(-1) > 0))
  if 'mpm_log_probs' in out:
    per_example['mpm'] = (
        token.masked_patch_kl(out['mpm_log_probs'], out['mpm_targets'], out['mpm_weights']),
        rows & (out['mpm_weights'].sum(-1) > 0))
  per_example['qic'] = (qic_per_example(
      out['qic_query'], out['qic_item'], valid, loss,
      batch.get('item_log_q') if loss.logq_correction else None, *_judged(out, batch, rows)), rows)
  for name in ('qim', 'qim2'):
    if f'{name}_logits' in out:
      # Rows whose batch holds no other item have no hard negative (qim_weights = 0).
      per_example[name] = (contrastive.qim_bce(out[f'{name}_logits'], out[f'{name}_labels']),
                           qim_rows)
  metrics, total = {}, 0.0
  for name, (values, mask) in per_example.items():
    value = masked_average(values, mask)
    metrics[f'loss/{name}'] = value
    total = total + loss.weights[name] * value
  metrics['loss/total'] = total
  sims = out['qic_query'] @ out['qic_item'].T
  sims = jnp.where(valid, sims, -jnp.inf)
  metrics['train/qic_accuracy'] = masked_average(
      jnp.argmax(sims, axis=1) == jnp.arange(sims.shape[0]), rows)
  if 'qim_logits' in out:
    metrics['train/qim_accuracy'] = masked_average(
        (out['qim_logits'][:, 0] > out['qim_logits'][:, 1]), rows)
  return total, metrics
