"""The recall train step: dense towers by optax, ID tables by row-sparse updates (DESIGN.md §2-3).

`train_step(state, batch, frozen)` is pure and module-level; `make_train_step` jits it once with
explicit shardings and the state donated, so the tables' scatters happen in place. Nothing in the
step touches a whole table: the ID rows and the frozen per-item features are gathered for the
batch's B*P positives and the S shared negatives, gradients are taken with respect to the gathered
rows, and `sparse_optim.apply_rows` scatters the updated rows back.

  batch   query_index, query_rows int32 [B]; positives, positive_rows int32 [B, P];
          positive_mask bool [B, P]; positive_log_q float32 [B, P];
          negatives, negative_rows int32 [S]; negative_log_q float32 [S]
          (data.train_batch; `negative*` are replicated, the rest split over `batch`)
  frozen  query_vectors [Qr, E], item_vectors [Nr, E], item_stats [Nr, 3],
          item_category int32 [Nr], item_cold_rows int32 [Nr] (needed with cold dropout only):
          fixed inputs (stage-1 vectors, train statistics, each item's cold ID row),
          row-sharded like the ID tables and never updated

Cold-start dropout (DropoutNet, Volkovs et al. 2017; `cold_dropout` > 0): each item occurrence
of the step (the B*P positive slots and the S negatives, independently) is, with probability
`cold_dropout`, presented as a cold item is at evaluation: statistics zero (what
data.ItemStats.gate_features gives an item without train impressions) and ID input the
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
import numpy as np
import optax

from mmret.embeddings import sparse_optim
from mmret.embeddings import tables
from mmret.jobs.recall.objective import recall_objective
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


def item_inputs(frozen, item_index):
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
  i_mm, stats, category = item_inputs(frozen, item_index)
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


def row_optimizer(c: ml_collections.ConfigDict) -> sparse_optim.RowOptimizer:
  return sparse_optim.RowOptimizer(name=c.name, learning_rate=c.lr, eps=c.eps, b1=c.b1,
                                   b2=c.b2, initial_accumulator=c.initial_accumulator)


def create_state(model, tx, row_opt, mesh, rules, *, num_query_rows, num_item_rows, dim,
                 mm_dim, rng, table_scale) -> RecallState:
  """Dense params replicated (small); ID tables and their slots created row-sharded."""
  k_params, k_query, k_item = jax.random.split(rng, 3)
  replicated = sharding_lib.replicated(mesh)

  def init_params(key):
    b = 2
    return model.init(key, np.zeros((b, dim), np.float32), np.zeros((b, mm_dim), np.float32),
                      np.zeros((b, dim), np.float32), np.zeros((b, mm_dim), np.float32),
                      np.zeros((b, 3), np.float32), np.zeros((b,), np.int32))['params']

  params = jax.jit(init_params, out_shardings=replicated)(k_params)
  opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
  table_sharding = tables.row_sharding(mesh, rules, 2)
  query_table = row_opt.init(tables.create_table(k_query, num_query_rows, dim, table_sharding,
                                                 scale=table_scale), mesh, rules)
  item_table = row_opt.init(tables.create_table(k_item, num_item_rows, dim, table_sharding,
                                                scale=table_scale), mesh, rules)
  step = jax.device_put(np.zeros((), np.int32), replicated)
  return RecallState(step=step, params=params, opt_state=opt_state,
                                 query_table=query_table, item_table=item_table)
