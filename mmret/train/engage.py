"""Que2Engage job (DESIGN.md §4): engagement-aware multitask EBR, its evaluation, its ablation.

  train_and_evaluate(config, workdir)   one model (config.ablation.rows empty), or the ablation
                                        of the source's Table 1 (rows x seeds, see `ablation`)
  train_one(config, workdir)            train + evaluate one model -> flat results dict
  train_step(state, batch, ...)         pure, module-level; jitted once with explicit shardings

Training follows the stage-1 job (mmret/train/pretrain.py): data -> mesh -> sharded TrainState ->
Checkpointer (state + Grain iterator) -> PreemptionGuard -> MetricsLogger (NaN check at log
steps). The context encoder's BatchNorm statistics live in `TrainState.constants['batch_stats']`:
the step applies the model with `mutable=['batch_stats']` and writes them back, so they are
checkpointed with the params and used (frozen) at evaluation.

Evaluation (`EngageEvaluator`), on the eval day (the day after the training days):
  engagement_auc   ROC-AUC of cos(q, d) against the engagement label over every labelled
                   eval-day impression (engaged vs impressed-but-not-engaged);
  relevance_auc    ROC-AUC of cos(q, d) over the same impressions against graded relevance:
                   relevant = logged grade >= eval.relevant_min_grade (default 2, exact match;
                   grade 1 = same category only counts as not relevant), ungraded ones left out;
  recall@K, recall@K/exact, ...  mmret.evaluate.retrieval.RetrievalEvaluator (ScaNN + exact);
  no_<modality>/<metric>         the same with that modality removed from every document (the
                                 AUCs and recall@K by exact search; ScaNN only for the full model).
"""

import copy
import functools
import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from mmret.data import engage_pages
from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.evaluate import metrics as metrics_lib
from mmret.evaluate import retrieval
from mmret.towers.engage import EngageModel
from mmret.train import checkpoint as checkpoint_lib
from mmret.train import distributed
from mmret.train import engage_objective
from mmret.train import loop
from mmret.train import metrics_log
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib
from mmret.train.pretrain import info, to_global

# The rows of the source's Table 1 (Que2Engage), as config overrides of the full model.
ABLATION_ROWS = {
    # Que2Search-like: no context token, in-batch negatives, relevance loss only.
    'contrastive': {'model.context_token': False, 'loss.mixed_negatives': False,
                    'data.num_negatives': 0, 'loss.weights.relevance': 1.0,
                    'loss.weights.engagement': 0.0, 'model.modality_dropout.text': 0.0,
                    'model.modality_dropout.image': 0.0, 'model.modality_dropout.context': 0.0},
    'context': {'model.context_token': True},
    'mixed_negatives': {'loss.mixed_negatives': True, 'data.num_negatives': None},
    'multitask': {'loss.weights.relevance': 0.8, 'loss.weights.engagement': 0.2},
    'multitask_dropout': {'model.modality_dropout.text': 0.5,
                          'model.modality_dropout.image': 0.0,
                          'model.modality_dropout.context': 0.5},
}
# Each row adds its overrides to those of the rows above it (cumulative, as in Table 1).
ROW_ORDER = tuple(ABLATION_ROWS)
TABLE_METRICS = ('engagement_auc', 'relevance_auc')


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, loss: ml_collections.ConfigDict,
               rng_impl: str = 'rbg'):
  """One step on a page batch (mmret.data.engage_pages). Pure: rng = fold_in(state.rng, step).

  Returns (new state with updated params, opt_state and batch_stats, metrics on device).
  """
  dropout_rng, modality_rng = jax.random.split(state_lib.step_key(state, rng_impl))

  def loss_fn(params):
    out, mutated = model.apply({'params': params, **state.constants}, batch, train=True,
                               rngs={'dropout': dropout_rng, 'modality': modality_rng},
                               mutable=['batch_stats'])
    total, metrics = engage_objective.engage_objective(out, batch, loss)
    return total, (metrics, mutated)

  (_, (metrics, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['train/grad_norm'] = optax.tree.norm(grads)
  constants = {**state.constants, **mutated}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       constants=constants), metrics


def make_train_step(model, tx, loss, mesh, state_shardings, rng_impl: str = 'rbg'):
  """jit(train_step) once, with explicit in/out shardings and the state donated."""
  step = functools.partial(train_step, model=model, tx=tx, loss=loss, rng_impl=rng_impl)
  return jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


class EngageEvaluator:
  """Engagement / relevance ROC-AUC and Recall@K of a Que2Engage model, also with one modality
  removed. `EngageEvaluator(model, data, config, constants).run(params) -> {metric: value}`."""

  def __init__(self, model: EngageModel, data: prepare_lib.PreparedData,
               config: ml_collections.ConfigDict, constants: Any):
    self.model, self.data, self.config, self.constants = model, data, config, constants
    self.impressions = engage_pages.labelled_impressions(data.dataset, 'eval')
    if not self.impressions.query:
      raise ValueError('no labelled eval-day impression: the engagement AUC needs an eval split '
                       '(docs/DATA.md, split rule) with click/purchase/engaged labels.')
    self._query_fn = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                      method=EngageModel.encode_query))
    self._doc_fn = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                    method=EngageModel.encode_document))
    self._item_batches = None

  @staticmethod
  def _collect(fn, params, batches) -> np.ndarray:
    out = []
    for batch in batches:
      batch = dict(batch)
      valid = np.asarray(batch.pop('valid'))
      out.append(distributed.to_host(fn(params, batch))[valid])
    return np.concatenate(out).astype(np.float32)

  def query_vectors(self, params, texts: list[str]) -> np.ndarray:
    c = self.config
    batches = pipelines.query_batches(texts, self.data.tokenizer, c.eval.batch_size,
                                      c.data.query_len, trigram_buckets=c.model.trigram_buckets,
                                      max_trigrams=c.data.max_trigrams)
    return self._collect(self._query_fn, params, batches)

  def item_vectors(self, params, remove: tuple[str, ...] = ()) -> np.ndarray:
    """[N, E] catalog vectors; `remove`d modalities are marked absent for every item.

    Removing a modality through its presence flags is the same as the model's `remove`
    argument (dropped and missing are one code path, tested), and needs one compiled function
    for all the robustness settings instead of one per setting.
    """
    if self._item_batches is None:  # read the catalog once for all settings
      self._item_batches = list(pipelines.item_batches(
          self.data.builder, self.data.tokenizer, self.config.eval.batch_size,
          self.config.data.title_len))
    flags = {'text': 'text_present', 'image': 'image_present', 'context': 'context_present'}
    batches = [{k: (np.zeros_like(v) if k in {flags[m] for m in remove} else v)
                for k, v in b.items()} for b in self._item_batches]
    return self._collect(self._doc_fn, params, batches)

  def removals(self) -> list[tuple[str, ...]]:
    out = [(), ('text',), ('image',)]
    if self.config.model.context_token:
      out.append(('context',))
    return out

  def run(self, params) -> dict[str, float]:
    imp, eval_set = self.impressions, self.data.eval_set
    texts = list(dict.fromkeys(list(eval_set.queries) + imp.query))
    pos = {q: i for i, q in enumerate(texts)}
    queries = self.query_vectors(params, texts)
    imp_q = queries[np.array([pos[q] for q in imp.query])]
    recall_q = queries[np.array([pos[q] for q in eval_set.queries], np.int64)]
    graded = imp.relevance >= 0
    relevant = imp.relevance >= self.config.eval.relevant_min_grade
    results = {}
    for remove in self.removals():
      prefix = ''.join(f'no_{m}/' for m in remove)
      items = self.item_vectors(params, remove)
      scores = np.sum(imp_q * items[imp.item], axis=1)                     # cos, [I]
      results[prefix + 'engagement_auc'] = metrics_lib.roc_auc(scores, imp.engaged)
      results[prefix + 'relevance_auc'] = metrics_lib.roc_auc(scores, relevant,
                                                              where=graded)
      evaluator = retrieval.RetrievalEvaluator(
          lambda _: recall_q, lambda _, items=items: items, eval_set,
          ks=tuple(self.config.eval.ks), scann=self.config.eval.scann and not remove)
      for k, v in evaluator.run(None).items():
        if not prefix or k.startswith('recall@'):
          results[prefix + k] = v
    return results


def train_one(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
              ) -> dict[str, float]:
  """Trains one Que2Engage model on `config.data`, evaluates it, returns the flat results."""
  workdir = pathlib.Path(workdir)
  t_start = time.perf_counter()
  data = prepare_lib.prepare(config.data)
  with config.unlocked():
    config.model.vocab_size = data.tokenizer.vocab_size
  examples = engage_pages.page_examples(data.dataset, 'train', config.data.max_page_negatives)
  info(f'data: {data.summary()}; {len(examples):,} engaged train impressions')

  mesh = sharding_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = sharding_lib.rules_from_config(config.axis_rules)
  model = EngageModel(config.model)
  tx = optimizer_lib.make_optimizer(config.optim, config.train.num_steps)

  process_count, process_index, full_batches = distributed.input_shard(
      config.data.process_sharding)  # full_batches: see to_global
  train_ds = engage_pages.engage_pages(
      examples, data.builder, data.tokenizer, batch_size=config.train.batch_size // process_count,
      seed=config.seed, num_negatives=config.data.num_negatives,
      query_len=config.data.query_len, title_len=config.data.title_len,
      trigram_buckets=config.model.trigram_buckets, max_trigrams=config.data.max_trigrams,
      shard_index=process_index, shard_count=process_count)
  train_iter = iter(train_ds)
  sample = next(iter(train_ds))  # shapes for init; a separate iterator, so no data is skipped

  def init_variables(rng):
    return model.init({'params': rng, 'dropout': rng, 'modality': rng}, sample, train=False)

  state, shardings = state_lib.create_sharded_state(
      init_variables, tx, jax.random.key(config.seed), mesh, rules,
      state_lib.step_key_data(config.seed + 1, config.train.rng_impl))
  info(f'model: {state_lib.param_count(state.params):,} parameters; mesh {dict(mesh.shape)}')

  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.train.checkpoint_every)
  if checkpointer.latest_step is not None:
    state = checkpointer.restore(state, train_iter)
    info(f'resumed from {checkpointer.directory} at step {int(state.step)}')

  logger = metrics_log.MetricsLogger(workdir, prefix=config.log_prefix)
  step_fn = make_train_step(model, tx, config.loss, mesh, shardings, config.train.rng_impl)
  start = int(state.step)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, last, train_seconds = loop.run(
        state, step_fn, lambda step: to_global(next(train_iter), mesh, full=full_batches),
        first_step=start + 1, num_steps=config.train.num_steps,
        log_every=config.train.log_every, checkpointer=checkpointer, data_iterator=train_iter,
        logger=logger, workdir=workdir,
        print_keys=('loss/total', 'loss/relevance', 'loss/engagement', 'train/accuracy'))
  examples_seen = (config.train.num_steps - start) * config.train.batch_size
  checkpointer.close()

  t_eval = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    results = EngageEvaluator(model, data, config, state.constants).run(state.params)
  results.update({k: v for k, v in last.items() if k.startswith(('loss/', 'train/'))})
  results['train/steps'] = float(config.train.num_steps)
  if train_seconds > 0 and examples_seen:
    results['perf/train_examples_per_sec'] = examples_seen / train_seconds
  results['perf/eval_seconds'] = time.perf_counter() - t_eval
  results['perf/total_seconds'] = time.perf_counter() - t_start
  logger.write_scalars(config.train.num_steps, {f'eval/{k}': v for k, v in results.items()})
  logger.close()
  return results


# -- the ablation (the source's Table 1) ------------------------------------------------------

def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  node = config
  *path, leaf = key.split('.')
  for part in path:
    node = node[part]
  node[leaf] = value


def row_config(config: ml_collections.ConfigDict, row: str, seed: int
               ) -> ml_collections.ConfigDict:
  """The config of one ablation row and seed: the rows up to `row` applied cumulatively."""
  if row not in ABLATION_ROWS:
    raise ValueError(f'config.ablation.rows: unknown row {row!r}; choose from {ROW_ORDER}.')
  c = copy.deepcopy(config)
  with c.unlocked():
    for name in ROW_ORDER[:ROW_ORDER.index(row) + 1]:
      for key, value in ABLATION_ROWS[name].items():
        # None = the configured value of the full model (e.g. its number of page negatives).
        _set(c, key, config.data.num_negatives if value is None else value)
    c.seed = seed
    c.ablation.rows = ()
    c.log_prefix = f'{row}/seed{seed} '
  return c


def aggregate(per_run: dict[str, list[dict[str, float]]]) -> dict[str, float]:
  """{row: [results per seed]} -> {'<row>/<metric>': mean, '<row>/<metric>/std': std}.

  std is the sample standard deviation (ddof=1) over seeds; 0 with a single seed.
  """
  out = {}
  for row, runs in per_run.items():
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    for key in keys:
      if key.startswith('perf/') or key.startswith('scann_neighbour'):
        continue
      values = np.array([r[key] for r in runs], np.float64)
      out[f'{row}/{key}'] = float(np.mean(values))
      out[f'{row}/{key}/std'] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out[f'{row}/seeds'] = float(len(runs))
  return out


def format_table(results: dict[str, float], rows: tuple[str, ...],
                 metrics: tuple[str, ...] = TABLE_METRICS) -> str:
  """The Table-1 view: one line per row, mean ± std (x100) of each metric."""
  width = max(18, *(len(m) + 2 for m in metrics))
  head = f'{"row":<20}' + ''.join(f'{m:>{width}}' for m in metrics)
  lines = [head, '-' * len(head)]
  for row in rows:
    cells = []
    for m in metrics:
      mean, std = results.get(f'{row}/{m}'), results.get(f'{row}/{m}/std')
      cells.append('n/a' if mean is None else f'{100 * mean:.2f} ± {100 * std:.2f}')
    lines.append(f'{row:<20}' + ''.join(f'{cell:>{width}}' for cell in cells))
  return '\n'.join(lines)


def ablation(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
             ) -> dict[str, float]:
  """Runs config.ablation.rows x config.ablation.seeds, each in `<workdir>/<row>/seed<k>`.

  A run whose results.json exists is not run again, so a killed ablation resumes (and a run
  killed mid-training resumes from its own checkpoint). Returns the aggregate (`aggregate`).
  """
  from mmret import jobs  # pylint: disable=g-import-not-at-top  (jobs imports this lazily)
  workdir = pathlib.Path(workdir)
  if config.ablation.compilation_cache:
    # Seeds of one row compile the same programs: the persistent cache compiles them once.
    jax.config.update('jax_compilation_cache_dir', str(workdir / 'xla_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  rows = tuple(config.ablation.rows)
  per_run: dict[str, list[dict[str, float]]] = {}
  t0 = time.perf_counter()
  for row in rows:
    for seed in config.ablation.seeds:
      run_dir = workdir / row / f'seed{seed}'
      done = run_dir / 'results.json'
      if done.is_file():
        info(f'ablation: {row}/seed{seed} done before, reading {done}')
        results = json.loads(done.read_text())
      else:
        info(f'ablation: {row}/seed{seed} ({time.perf_counter() - t0:.0f}s so far)')
        results = jobs.run(row_config(config, row, seed), run_dir)
      per_run.setdefault(row, []).append(results)
  out = aggregate(per_run)
  out['perf/ablation_seconds'] = time.perf_counter() - t0
  info('\nQue2Engage ablation (AUC x 100, mean ± std over seeds ' +
       f'{tuple(config.ablation.seeds)}):\n' + format_table(out, rows))
  robust = tuple(f'no_{m}/{k}' for m in ('text', 'image', 'context') for k in TABLE_METRICS)
  info('\nrobustness (one modality removed at inference):\n' +
       format_table(out, rows, robust[:2]) + '\n' + format_table(out, rows, robust[2:4]) +
       '\n' + format_table(out, rows, robust[4:]))
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """The 'engage' job: the ablation when config.ablation.rows is set, else one model."""
  if config.ablation.rows:
    return ablation(config, workdir)
  return train_one(config, workdir)
