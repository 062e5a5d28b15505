"""Stage-2 job: vector recall with sharded ID tables, sampled softmax and gated ID/content fusion
(DESIGN.md §2-3), evaluated as in stage 1 (§5) with a head / tail / cold breakdown.

  train_and_evaluate(config, workdir, run_job)
    1. stage-1 vectors of every train and eval query and of the catalog (stage1.py; a missing
       stage 1 is run first with `run_job`)
    2. ID vocabularies, train statistics, item groups, the negative sampler (data.py)
    3. per variant in config.variants (a fusion, mmret.towers.recall.FUSIONS): a sharded
       state, the jitted row-sparse step (step.py), trained by the shared runner under
       <workdir>/<variant>/; then Recall@K / relevance@K with ScaNN and exact search
       (evaluator.py); its model directory <workdir>/<variant>/model/ (model_files.py)
    4. results keyed '<variant>/<metric>', e.g. 'gate_add/recall@100/tail'

A killed job rerun with the same workdir resumes: finished variants restore their final
checkpoint (no training), the interrupted one resumes from its last checkpoint.
"""

import pathlib

import jax
import ml_collections
import numpy as np

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.embeddings import tables
from mmret.jobs.recall import data as data_lib
from mmret.jobs.recall import evaluator
from mmret.jobs.recall import model_files
from mmret.jobs.recall import stage1
from mmret.jobs.recall import step as step_lib
from mmret.towers import recall as recall_model
from mmret.train import model_dir
from mmret.train import runner as runner_lib
from mmret.train import sharding as sharding_lib
from mmret.train.progress import info

PRINT_KEYS = ('loss/total', 'loss/softmax', 'loss/id_view', 'loss/content_view', 'loss/triplet',
              'train/gate_mean', 'train/gate_mean_dropped')


class Context:
  """What every variant shares: data, ID maps, statistics, groups, sampler, frozen tables."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path,
               runner: runner_lib.Runner, run_job: stage1.RunJob):
    self.data = prepare_lib.prepare(config.stage1.data)
    info(f'data: {self.data.summary()}')
    self.data.require_eval_queries()
    self.data.require_train_positives()
    self.stats = data_lib.item_stats(self.data)
    self.groups = self.stats.groups(config.eval.head_click_share)
    info('item groups (train days): ' + ', '.join(
        f'{k} {int(v.sum()):,}' for k, v in self.groups.items()))
    self.eval_set = self.data.eval_set
    train_queries = pipelines.query_vocabulary(self.data.builder)
    self.maps = data_lib.id_maps(self.data, train_queries, self.eval_set.queries, self.stats,
                                 config.ids.query_buckets, config.ids.item_buckets)
    query_vecs, item_vecs = stage1.load_or_extract(config, workdir, self.data,
                                                   self.maps.queries, run_job, log=info)
    self.mm_dim = item_vecs.shape[1]
    self.sampler = data_lib.NegativeSampler(self.stats.clicks, config.negatives.smoothing,
                                            support=self.stats.impressions > 0)
    sharding1 = tables.row_sharding(runner.mesh, runner.rules, 1)
    sharding2 = tables.row_sharding(runner.mesh, runner.rules, 2)
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


def cold_dropout_rate(config: ml_collections.ConfigDict, fusion: str) -> float:
  """train.cold_dropout for the fusions in train.cold_dropout_fusions that read item IDs; else 0
  (mm_only has no ID input to drop)."""
  if fusion in config.train.cold_dropout_fusions and recall_model.uses_ids(fusion):
    return float(config.train.cold_dropout)
  return 0.0


def train_variant(config: ml_collections.ConfigDict, fusion: str, ctx: Context,
                  runner: runner_lib.Runner, workdir: pathlib.Path) -> dict[str, float]:
  """Trains one variant (resuming from its checkpoints) and evaluates it."""
  workdir.mkdir(parents=True, exist_ok=True)
  model_config = ml_collections.ConfigDict(config.model.to_dict())  # a per-variant copy
  model_config.fusion = fusion
  model = recall_model.RecallModel(model_config, num_categories=ctx.stats.num_categories)
  tx = runner.optimizer()
  row_opt = step_lib.row_optimizer(config.id_optim)
  state = step_lib.create_state(model, tx, row_opt, runner.mesh, runner.rules,
                                num_query_rows=ctx.maps.query_vocab.num_rows,
                                num_item_rows=ctx.maps.item_vocab.num_rows,
                                dim=config.model.dim, mm_dim=ctx.mm_dim,
                                rng=jax.random.key(config.seed),
                                table_scale=config.ids.init_scale)
  train_iter = iter(pipelines.recall_pages(ctx.data.builder, batch_size=config.train.batch_size,
                                           seed=config.seed))
  cold_dropout = cold_dropout_rate(config, fusion)
  if cold_dropout:
    info(f'{fusion}: cold-start dropout {cold_dropout:g}')
  step_fn = step_lib.make_train_step(model, tx, row_opt, config.loss, runner.mesh, state,
                                     ctx.frozen, data_lib.BATCH_KEYS, cold_dropout=cold_dropout,
                                     seed=config.seed)

  def next_batch(step):
    # Negatives are drawn from (seed, step), so a resumed run draws the same ones.
    host = data_lib.train_batch(next(train_iter), ctx.maps, ctx.sampler,
                                num_negatives=config.negatives.num, seed=config.seed,
                                step=step)
    return sharding_lib.to_device(host, runner.mesh, full=True,
                                  replicated_keys=step_lib.REPLICATED_BATCH_KEYS)

  trained = runner.train(state, lambda s, b: step_fn(s, b, ctx.frozen), train_iter, next_batch,
                         print_keys=PRINT_KEYS, workdir=workdir, log_prefix=f'{fusion} ')
  fused = evaluator.fused_vectors(ctx, model, trained.state, config)
  results = evaluator.evaluate(ctx, model, trained.state, config, fused)
  stage1_model = stage1.stage1_workdir(config, workdir.parent) / model_dir.MODEL_DIR
  if (stage1_model / 'format.json').is_file():
    model_files.save(workdir / model_dir.MODEL_DIR, config, fusion, ctx, trained.state, *fused,
                     stage1_model)
  else:  # a stage-1 run from before model directories: nothing to copy the text towers from
    info(f'{fusion}: no model directory written ({stage1_model} missing; rerun stage 1 there)')
  results['train/cold_dropout'] = cold_dropout
  return runner.epilogue(results, trained)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       run_job: stage1.RunJob) -> dict[str, float]:
  """Every variant of config.variants, trained and evaluated; the flat results dict."""
  workdir = pathlib.Path(workdir)
  runner = runner_lib.Runner(config, workdir)
  ctx = Context(config, workdir, runner, run_job)
  results = {f'groups/{k}_items': float(v.sum()) for k, v in ctx.groups.items()}
  for fusion in config.variants:
    info(f'--- variant {fusion} ---')
    out = train_variant(config, fusion, ctx, runner, workdir / fusion)
    results.update({f'{fusion}/{k}': v for k, v in out.items()
                    if not k.startswith('scann_neighbour')})
  results['train/steps'] = float(config.train.num_steps)
  return results
