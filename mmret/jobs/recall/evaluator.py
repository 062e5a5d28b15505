"""Recall-model evaluation: the stage-1 protocol (ScaNN + exact Recall@K, relevance@K) with a
head / tail / cold breakdown of the catalog (mmret.evaluate.groups).

    encoders = make_encoders(model)     # jitted towers reading the ID tables + frozen inputs
    results = evaluate(ctx, model, state, config)
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmret.embeddings import tables
from mmret.evaluate import groups as groups_lib
from mmret.evaluate import retrieval
from mmret.evaluate import vectors
from mmret.jobs.recall import step
from mmret.towers import recall as recall_model


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
    i_mm, stats, category = step.item_inputs(frozen, index)
    return model.apply({'params': state.params}, ids(state.item_table, rows), i_mm, stats,
                       category, method=recall_model.RecallModel.encode_item)['item_vec']

  return queries, items


def index_batches(index: np.ndarray, rows: np.ndarray, chunk: int):
  """Fixed-size chunks of (catalog or query index, ID row) with `valid` marking real entries
  (one compiled program for every chunk)."""
  for start in range(0, index.shape[0], chunk):
    i, r = index[start:start + chunk], rows[start:start + chunk]
    n = i.shape[0]
    valid = np.arange(chunk) < n
    yield {'index': np.pad(i, (0, chunk - n)), 'rows': np.pad(r, (0, chunk - n)), 'valid': valid}


def fused_vectors(ctx, model: recall_model.RecallModel, state: step.RecallState,
                  config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(query vectors float32 [Q, D] of ctx.eval_set.queries, item vectors float32 [N, D])."""
  encode_queries, encode_items = make_encoders(model)
  chunk = config.eval.batch_size
  catalog = np.arange(ctx.data.num_items, dtype=np.int32)
  items = vectors.extract(lambda s, b: encode_items(s, ctx.frozen, b['index'], b['rows']),
                          state, index_batches(catalog, ctx.maps.item_rows, chunk),
                          what='items', total=len(catalog))
  queries = vectors.extract(
      lambda s, b: encode_queries(s, ctx.frozen, b['index'], b['rows']), state,
      index_batches(ctx.eval_query_index, ctx.maps.query_rows[ctx.eval_query_index], chunk),
      what='queries', total=len(ctx.eval_query_index))
  return queries, items


def evaluate(ctx, model: recall_model.RecallModel, state: step.RecallState,
             config: ml_collections.ConfigDict,
             fused: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
  """Stage-1 protocol (ScaNN + exact Recall@K, relevance@K) plus the group breakdown.

  ctx: the job's shared context (eval set, ID maps, frozen inputs, item groups). fused: the
  (queries, items) of fused_vectors, when the caller already has them.
  """
  queries, items = fused if fused is not None else fused_vectors(ctx, model, state, config)
  ks = tuple(config.eval.ks)
  evaluator = retrieval.RetrievalEvaluator(
      ctx.eval_set, ks=ks, scann=config.eval.scann,
      scann_params=config.eval.get('scann_params'),
      extra_target_sets=groups_lib.group_target_sets(ctx.eval_set.targets, ctx.groups))
  result = evaluator.run(queries, items)
  out = dict(result.metrics)
  # Relevance and share per group, on the exact top-K (the oracle ranking).
  out.update(groups_lib.group_ranking_metrics(result.exact_ids, ctx.eval_set, ctx.groups, ks))
  return out
