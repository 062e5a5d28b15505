"""The recall train step: dense towers by optax, ID tables by row-sparse updates (DESIGN.md §2-3).

`train_step(state, batch, frozen)` is pure and module-level; `make_train_step` jits it once with
explicit shardings and the state donated, so the tables' scatters happen in place. Nothing in the
step touches a whole table: the ID rows and the frozen per-item features are gathered for the
batch's B*P positives and the S shared negatives, gradients are taken with respect to the gathered
rows, and `sparse_optim.apply_rows` scatters the updated rows back.

  batch   query_index, query_rows int32 [B]; positives, positive_rows int32 [B, P];
          positive_mask bool [B, P]; positive_log_q float32 [B, P];
          negatives, negative_rows int32 [S]; negative_log_q float32 [S]
          (recall_data.train_batch; `negative*` are replicated, the rest split over `batch`)
  frozen  query_vectors [Qr, E], item_vectors [Nr, E], item_stats [Nr, 3],
          item_category int32 [Nr], item_cold_rows int32 [Nr] (needed with cold dropout only):
          fixed inputs (stage-1 vectors, train statistics, each item's cold ID row),
          row-sharded like the ID tables and never updated

Cold-start dropout (DropoutNet, Volkovs et al. 2017; `cold_dropout` > 0): each item occurrence
of the step (the B*P positive slots and the S negatives, independently) is, with probability
`cold_dropout`, presented as a cold item is at evaluation: statistics zero (what
recall_data.ItemStats.gate_features gives an item without train impressions) and ID input the
row its ID would look up if unseen (`item_cold_rows`: its hashed bucket, or the OOV row), read
as a constant. The occurrence's own ID row gets no gradient (its row index becomes the padding
id), and neither does the cold row: bucket rows stay untrained, as they are for the cold items
that eval looks up there. The mask is `bernoulli(fold_in(fold_in(key(seed), stream), step))`
over the step's M items: drawn inside the jitted step, O(M), deterministic in (seed, step) so
a resumed run is exact. With gated fusion, dropped positives leave the ID-view loss and the
triplet (their ID view is not the item's). cold_dropout = 0 compiles the step without any of it.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmret.embeddings import sparse_optim
from mmret.embeddings import tables
from mmret.losses import sampled_softmax
from mmret.losses import triplet
from mmret.towers import recall as recall_model
from mmret.train import sharding as sharding_lib

REPLICATED_BATCH_KEYS = ('negatives', 'negative_rows', 'negative_log_q')
COLD_DROPOUT_STREAM = 0xC01D  # fold_in constant: the cold-dropout mask's own PRNG stream


@flax.struct.dataclass
class RecallState:
  """step int32 []; params/opt_state: the dense towers and their optax state (replicated);
  query_table / item_table: sparse_optim.SparseTable, row-sharded."""
  step: jax.Array
  params: Any
  opt_state: Any
  query_table: sparse_optim.SparseTable
  item_table: sparse_optim.SparseTable


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
    id_view = recall_model.l2_normalize(out['id_view'])
    content = recall_model.l2_normalize(out['content_view'])
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
    valid = valid.astype(jnp.float32)
    metrics['loss/triplet'] = jnp.sum(per * valid) / jnp.maximum(valid.sum(), 1.0)
    total = total + loss.view_weight * (metrics['loss/id_view'] + metrics['loss/content_view'])
    total = total + loss.triplet_weight * metrics['loss/triplet']
    metrics['train/gate_mean'] = jnp.sum(out['gate'][:m, 0] * mask.reshape(-1)) / denom
    if dropped is not None:  # the gate on the positives presented as cold
      cold = (mask.reshape(-1) & dropped[:m]).astype(jnp.float32)
      metrics['train/gate_mean_dropped'] = (jnp.sum(out['gate'][:m, 0] * cold)
                                            / jnp.maximum(cold.sum(), 1.0))
  metrics['loss/total'] = total
  return total, metrics


def _item_inputs(frozen, item_index):
  return (tables.lookup(frozen['item_vectors'], item_index),
          tables.lookup(frozen['item_stats'], item_index),
          jnp.take(frozen['item_category'], item_index, mode='fill', fill_value=0))


def cold_dropout_mask(seed: int, step: jax.Array, count: int, rate: float) -> jax.Array:
  """bool [count]: which of the step's item occurrences are presented as cold. Each is True
  with probability `rate`, independently; a pure function of (seed, step)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), COLD_DROPOUT_STREAM), step)
  return jax.random.bernoulli(key, rate, (count,))


def cold_item_inputs(item_table: jax.Array, frozen: dict[str, jax.Array],
                     item_index: jax.Array, item_rows: jax.Array, i_id: jax.Array,
                     stats: jax.Array, dropped: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cold-start dropout on the gathered item inputs of M occurrences: a dropped one gets its
  cold ID row's embedding (a constant), zero statistics, and the padding row index (so its own
  ID row is not updated). -> (i_id [M, d], stats [M, 3], item_rows [M])."""
  item_pad = item_table.shape[0]
  cold_rows = jnp.take(frozen['item_cold_rows'], item_index, mode='fill', fill_value=item_pad)
  cold_id = jax.lax.stop_gradient(tables.lookup(item_table, cold_rows))
  i_id = jnp.where(dropped[:, None], cold_id, i_id)
  stats = jnp.where(dropped[:, None], jnp.zeros_like(stats), stats)
  item_rows = jnp.where(dropped, item_pad, item_rows)
  return i_id, stats, item_rows


def train_step(state: RecallState, batch: dict[str, jax.Array], frozen: dict[str, jax.Array], *,
               model: recall_model.RecallModel, tx: optax.GradientTransformation,
               row_opt: sparse_optim.RowOptimizer, loss: ml_collections.ConfigDict,
               cold_dropout: float = 0.0, seed: int = 0
               ) -> tuple[RecallState, dict[str, jax.Array]]:
  """One step. Returns (new state, metrics of scalars, still on device).

  cold_dropout: the probability that an item occurrence is presented as cold (module
  docstring); 0, or a fusion without IDs, traces exactly the step without it. seed: the job's
  seed, for the dropout mask.
  """
  fusion = model.config.fusion
  mask = batch['positive_mask']
  item_index = jnp.concatenate([batch['positives'].reshape(-1), batch['negatives']])
  item_pad = state.item_table.table.shape[0]  # out of range: reads zeros, updates nothing
  item_rows = jnp.concatenate([
      jnp.where(mask.reshape(-1), batch['positive_rows'].reshape(-1), item_pad),
      batch['negative_rows']])
  query_rows = batch['query_rows']
  i_mm, stats, category = _item_inputs(frozen, item_index)
  q_mm = tables.lookup(frozen['query_vectors'], batch['query_index'])
  use_ids = recall_model.uses_ids(fusion)
  dim = state.item_table.table.shape[1]
  if use_ids:
    q_id = tables.lookup(state.query_table.table, query_rows)
    i_id = tables.lookup(state.item_table.table, item_rows)
  else:  # placeholders the model ignores; the tables are left alone
    q_id = jnp.zeros((query_rows.shape[0], dim), jnp.float32)
    i_id = jnp.zeros((item_rows.shape[0], dim), jnp.float32)
  dropped = None
  if cold_dropout > 0 and use_ids:
    dropped = cold_dropout_mask(seed, state.step, item_index.shape[0], cold_dropout)
    i_id, stats, item_rows = cold_item_inputs(state.item_table.table, frozen, item_index,
                                              item_rows, i_id, stats, dropped)

  def loss_fn(params, q_id, i_id):
    out = model.apply({'params': params}, q_id, q_mm, i_id, i_mm, stats, category)
    return recall_objective(out, batch, loss, fusion, dropped)

  (_, metrics), (g_params, g_q, g_i) = jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2), has_aux=True)(state.params, q_id, i_id)
  updates, opt_state = tx.update(g_params, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  query_table, item_table = state.query_table, state.item_table
  if use_ids:
    count = state.step + 1
    query_table = sparse_optim.apply_rows(query_table, query_rows, g_q, row_opt, count)
    item_table = sparse_optim.apply_rows(item_table, item_rows, g_i, row_opt, count)
    metrics['train/id_grad_norm'] = jnp.sqrt(jnp.sum(g_i * g_i) + jnp.sum(g_q * g_q))
  metrics['train/grad_norm'] = optax.tree.norm(g_params)
  return RecallState(step=state.step + 1, params=params, opt_state=opt_state,
                     query_table=query_table, item_table=item_table), metrics


def state_shardings(state: RecallState):
  return jax.tree.map(lambda x: x.sharding, state)


def batch_shardings(mesh, batch_keys) -> dict:
  return {k: (sharding_lib.replicated(mesh) if k in REPLICATED_BATCH_KEYS
              else sharding_lib.batch_sharding(mesh)) for k in batch_keys}


def make_train_step(model, tx, row_opt, loss, mesh, state: RecallState, frozen: dict,
                    batch_keys, *, cold_dropout: float = 0.0, seed: int = 0):
  """jit(train_step) once: explicit shardings, the state (tables and slots) donated."""
  step = functools.partial(train_step, model=model, tx=tx, row_opt=row_opt, loss=loss,
                           cold_dropout=float(cold_dropout), seed=int(seed))
  shard = state_shardings(state)
  return jax.jit(step, in_shardings=(shard, batch_shardings(mesh, batch_keys),
                                     jax.tree.map(lambda x: x.sharding, frozen)),
                 out_shardings=(shard, sharding_lib.replicated(mesh)), donate_argnums=(0,))


def to_device(batch: dict, mesh) -> dict[str, jax.Array]:
  """Host batch -> global arrays (single process: each device takes its slice)."""
  shardings = batch_shardings(mesh, batch)
  return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
          for k, v in batch.items()}


def make_encoders(model: recall_model.RecallModel):
  """Jitted eval encoders: (state, frozen, index [C], rows [C]) -> vectors [C, D]."""
  fusion = model.config.fusion

  def ids(table, rows):
    if recall_model.uses_ids(fusion):
      return tables.lookup(table.table, rows)
    return jnp.zeros((rows.shape[0], table.table.shape[1]), jnp.float32)

  @jax.jit
  def queries(state, frozen, index, rows):
    q_mm = tables.lookup(frozen['query_vectors'], index)
    return model.apply({'params': state.params}, ids(state.query_table, rows), q_mm,
                       method=recall_model.RecallModel.encode_query)['query_vec']

  @jax.jit
  def items(state, frozen, index, rows):
    i_mm, stats, category = _item_inputs(frozen, index)
    return model.apply({'params': state.params}, ids(state.item_table, rows), i_mm, stats,
                       category, method=recall_model.RecallModel.encode_item)['item_vec']

  return queries, items
