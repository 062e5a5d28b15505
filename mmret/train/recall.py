"""Stage-2 job: vector recall with sharded ID tables, sampled softmax and gated ID/content fusion
(DESIGN.md §2-3), evaluated as in stage 1 (§5) with a head / tail / cold breakdown.

  train_and_evaluate(config, workdir)
    1. stage-1 vectors of every train and eval query and of the catalog (stage1_vectors)
    2. ID vocabularies, train statistics, item groups, the negative sampler (recall_data)
    3. per variant in config.variants (a fusion, mmret.towers.recall.FUSIONS): a sharded
       state, the jitted step, Checkpointer + PreemptionGuard + MetricsLogger as in stage 1,
       under <workdir>/<variant>/; then Recall@K / relevance@K with ScaNN and exact search
    4. results keyed '<variant>/<metric>', e.g. 'gate_add/recall@100/tail'

A killed job rerun with the same workdir resumes: finished variants restore their final
checkpoint (no training), the interrupted one resumes from its last checkpoint.
"""

import math
import pathlib
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.embeddings import sparse_optim
from mmret.embeddings import tables
from mmret.evaluate import groups as groups_lib
from mmret.evaluate import retrieval
from mmret.evaluate import search
from mmret.towers import recall as recall_model
from mmret.train import checkpoint as checkpoint_lib
from mmret.train import loop
from mmret.train import metrics_log
from mmret.train import optimizer as optimizer_lib
from mmret.train import recall_data
from mmret.train import recall_step
from mmret.train import sharding as sharding_lib
from mmret.train import stage1_vectors
from mmret.train.pretrain import info


def row_optimizer(c: ml_collections.ConfigDict) -> sparse_optim.RowOptimizer:
  return sparse_optim.RowOptimizer(name=c.name, learning_rate=c.lr, eps=c.eps, b1=c.b1,
                                   b2=c.b2, initial_accumulator=c.initial_accumulator)


def create_state(model, tx, row_opt, mesh, rules, *, num_query_rows, num_item_rows, dim,
                 mm_dim, rng, table_scale) -> recall_step.RecallState:
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
  return recall_step.RecallState(step=step, params=params, opt_state=opt_state,
                                 query_table=query_table, item_table=item_table)


class Context:
  """What every variant shares: data, ID maps, statistics, groups, sampler, frozen tables."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh, rules):
    self.data = prepare_lib.prepare(config.stage1.data)
    info(f'data: {self.data.summary()}')
    self.stats = recall_data.item_stats(self.data)
    self.groups = self.stats.groups(config.eval.head_click_share)
    info('item groups (train days): ' + ', '.join(
        f'{k} {int(v.sum()):,}' for k, v in self.groups.items()))
    self.eval_set = self.data.eval_set
    train_queries = pipelines.query_vocabulary(self.data.builder)
    self.maps = recall_data.id_maps(self.data, train_queries, self.eval_set.queries, self.stats,
                                    config.ids.query_buckets, config.ids.item_buckets)
    query_vecs, item_vecs = stage1_vectors.load_or_extract(config, workdir, self.data,
                                                           self.maps.queries, log=info)
    self.mm_dim = item_vecs.shape[1]
    self.sampler = recall_data.NegativeSampler(self.stats.clicks, config.negatives.smoothing,
                                               support=self.stats.impressions > 0)
    sharding1 = tables.row_sharding(mesh, rules, 1)
    sharding2 = tables.row_sharding(mesh, rules, 2)
    self.frozen = {
        'query_vectors': tables.put_rows(query_vecs, sharding2),
        'item_vectors': tables.put_rows(item_vecs, sharding2),
        'item_stats': tables.put_rows(self.stats.gate_features(), sharding2),
        'item_category': tables.put_rows(self.stats.category, sharding1),
        # The ID row each item would look up if it were cold (train.cold_dropout).
        'item_cold_rows': tables.put_rows(self.maps.item_cold_rows, sharding1),
    }
    position = self.maps.query_position()
    self.eval_query_index = np.array([position[q] for q in self.eval_set.queries], np.int32)


def _encode(fn, state, frozen, index: np.ndarray, rows: np.ndarray, chunk: int) -> np.ndarray:
  out = []
  for start in range(0, index.shape[0], chunk):
    i, r = index[start:start + chunk], rows[start:start + chunk]
    n = i.shape[0]
    pad = chunk - n  # a fixed shape: one compilation
    i, r = np.pad(i, (0, pad)), np.pad(r, (0, pad))
    out.append(np.asarray(fn(state, frozen, i, r))[:n])
  return np.concatenate(out).astype(np.float32)


def evaluate_variant(ctx: Context, model, state, config) -> dict[str, float]:
  """Stage-1 protocol (ScaNN + exact Recall@K, relevance@K) plus the group breakdown."""
  encode_queries, encode_items = recall_step.make_encoders(model)
  chunk = config.eval.batch_size
  catalog = np.arange(ctx.data.num_items, dtype=np.int32)
  items_fn = lambda s: _encode(encode_items, s, ctx.frozen, catalog, ctx.maps.item_rows, chunk)
  queries_fn = lambda s: _encode(encode_queries, s, ctx.frozen, ctx.eval_query_index,
                                 ctx.maps.query_rows[ctx.eval_query_index], chunk)
  ks = tuple(config.eval.ks)
  evaluator = retrieval.RetrievalEvaluator(
      queries_fn, items_fn, ctx.eval_set, ks=ks, scann=config.eval.scann,
      extra_target_sets=groups_lib.group_target_sets(ctx.eval_set.targets, ctx.groups))
  out = evaluator.run(state)
  # Relevance and share per group, on the exact top-K (the oracle ranking).
  _, ids = search.exact_topk(queries_fn(state), items_fn(state), max(ks))
  out.update(groups_lib.group_ranking_metrics(ids, ctx.eval_set, ctx.groups, ks))
  return out


def cold_dropout_rate(config: ml_collections.ConfigDict, fusion: str) -> float:
  """train.cold_dropout for the fusions in train.cold_dropout_fusions that read item IDs; else 0
  (mm_only has no ID input to drop)."""
  if fusion in config.train.cold_dropout_fusions and recall_model.uses_ids(fusion):
    return float(config.train.cold_dropout)
  return 0.0


def train_variant(config, fusion: str, ctx: Context, mesh, rules, workdir: pathlib.Path
                  ) -> dict[str, float]:
  """Trains one variant (resuming from its checkpoints) and evaluates it."""
  workdir.mkdir(parents=True, exist_ok=True)
  model_config = ml_collections.ConfigDict(config.model.to_dict())  # a per-variant copy
  model_config.fusion = fusion
  model_config.num_categories = ctx.stats.num_categories
  model = recall_model.RecallModel(model_config)
  num_steps = config.train.num_steps
  tx = optimizer_lib.make_optimizer(config.optim, num_steps)
  row_opt = row_optimizer(config.id_optim)
  state = create_state(model, tx, row_opt, mesh, rules,
                       num_query_rows=ctx.maps.query_vocab.num_rows,
                       num_item_rows=ctx.maps.item_vocab.num_rows, dim=config.model.dim,
                       mm_dim=ctx.mm_dim, rng=jax.random.key(config.seed),
                       table_scale=config.ids.init_scale)

  pages = pipelines.recall_pages(ctx.data.builder, batch_size=config.train.batch_size,
                                 seed=config.seed)
  train_iter = iter(pages)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.train.checkpoint_every)
  if checkpointer.latest_step is not None:
    state = checkpointer.restore(state, train_iter)
    info(f'{fusion}: resumed from {checkpointer.directory} at step {int(state.step)}')

  batch_keys = ('query_index', 'query_rows', 'positives', 'positive_rows', 'positive_mask',
                'positive_log_q', 'negatives', 'negative_rows', 'negative_log_q')
  cold_dropout = cold_dropout_rate(config, fusion)
  if cold_dropout:
    info(f'{fusion}: cold-start dropout {cold_dropout:g}')
  step_fn = recall_step.make_train_step(model, tx, row_opt, config.loss, mesh, state,
                                        ctx.frozen, batch_keys, cold_dropout=cold_dropout,
                                        seed=config.seed)
  logger = metrics_log.MetricsLogger(workdir, prefix=f'{fusion} ')
  start = int(state.step)

  def next_batch(step):
    # Negatives are drawn from (seed, step), so a resumed run draws the same ones.
    host = recall_data.train_batch(next(train_iter), ctx.maps, ctx.sampler,
                                   num_negatives=config.negatives.num, seed=config.seed,
                                   step=step)
    return recall_step.to_device(host, mesh)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, last, train_seconds = loop.run(
        state, lambda s, b: step_fn(s, b, ctx.frozen), next_batch, first_step=start + 1,
        num_steps=num_steps, log_every=config.train.log_every, checkpointer=checkpointer,
        data_iterator=train_iter, logger=logger, workdir=workdir, print_keys=(
            'loss/total', 'loss/softmax', 'loss/id_view', 'loss/content_view', 'loss/triplet',
            'train/gate_mean', 'train/gate_mean_dropped'))
  checkpointer.close()

  results = evaluate_variant(ctx, model, state, config)
  results.update({k: v for k, v in last.items() if k.startswith(('loss/', 'train/'))})
  results['train/cold_dropout'] = cold_dropout_rate(config, fusion)
  if num_steps > start and train_seconds > 0:
    results['perf/train_steps_per_sec'] = (num_steps - start) / train_seconds
  # NaN is a legitimate eval value (e.g. relevance of a group nothing was retrieved from);
  # TensorBoard gets the finite ones.
  logger.write_scalars(num_steps, {f'eval/{k}': v for k, v in results.items()
                                   if math.isfinite(v)})
  logger.close()
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Every variant of config.variants, trained and evaluated; the flat results dict."""
  workdir = pathlib.Path(workdir)
  t_start = time.perf_counter()
  mesh = sharding_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = sharding_lib.rules_from_config(config.axis_rules)
  ctx = Context(config, workdir, mesh, rules)
  results = {f'groups/{k}_items': float(v.sum()) for k, v in ctx.groups.items()}
  for fusion in config.variants:
    info(f'--- variant {fusion} ---')
    out = train_variant(config, fusion, ctx, mesh, rules, workdir / fusion)
    results.update({f'{fusion}/{k}': v for k, v in out.items()
                    if not k.startswith('scann_neighbour')})
  results['train/steps'] = float(config.train.num_steps)
  results['perf/total_seconds'] = time.perf_counter() - t_start
  return results
