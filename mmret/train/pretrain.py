"""Stage-1 job: multimodal pre-training (DESIGN.md §1), then retrieval evaluation (§5).

`train_and_evaluate(config, workdir)` is the whole job; `train_step` is the pure, module-level
step that is jitted once with explicit shardings. Everything here is importable from a notebook.
"""

import functools
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.encoders import bert_import
from mmret.evaluate import bm25
from mmret.evaluate import retrieval
from mmret.towers import masking
from mmret.towers.pretrain import PretrainModel
from mmret.towers.pretrain import set_codebook
from mmret.train import checkpoint as checkpoint_lib
from mmret.train import distributed
from mmret.train import loop
from mmret.train import metrics_log
from mmret.train import objectives
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib


def info(message: str) -> None:
  """Progress for the user, printed once (by process 0) in a multi-process job."""
  if jax.process_index() == 0:
    print(message, flush=True)


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, loss: ml_collections.ConfigDict,
               rng_impl: str = 'rbg'):
  """One optimisation step. Pure: the RNG is `fold_in(state.rng, state.step)`.

  Args:
    state: the train state (params, optimizer state, constants, step, rng).
    batch: a pre-training pair batch (docs/ARCHITECTURE.md), sharded over `batch`.
  Returns:
    (new state, metrics dict of scalars, still on device).
  """
  rng = state_lib.step_key(state, rng_impl)
  dropout_rng, masking_rng = jax.random.split(rng)

  def loss_fn(params):
    out = model.apply({'params': params, **state.constants}, batch, train=True,
                      rngs={'dropout': dropout_rng, 'masking': masking_rng})
    return objectives.pretrain_objective(out, batch, loss)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['train/grad_norm'] = optax.tree.norm(grads)
  metrics['train/param_norm'] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model, tx, loss, mesh, state_shardings, rng_impl: str = 'rbg'):
  """jit(train_step) once, with explicit in/out shardings and the state donated."""
  step = functools.partial(train_step, model=model, tx=tx, loss=loss, rng_impl=rng_impl)
  return jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


def to_global(batch: dict[str, np.ndarray], mesh, *, full: bool = False
              ) -> dict[str, jax.Array]:
  """Numpy batch -> global jax.Arrays sharded over the data axis (multi-host safe).

  full=False: `batch` is this process's rows only (data.process_sharding='per_process').
  full=True: every process holds the whole global batch ('global_batch') and each device takes
  its own rows of it, so the global batch does not depend on the number of processes.
  """
  sharding = sharding_lib.batch_sharding(mesh)
  if full:
    return {k: jax.make_array_from_callback(np.shape(v), sharding,
                                            lambda idx, v=np.asarray(v): v[idx])
            for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


class VectorExtractor:
  """Query and item vectors for evaluation, by jitted `encode_query` / `encode_item`."""

  def __init__(self, model: PretrainModel, data: prepare_lib.PreparedData,
               config: ml_collections.ConfigDict, constants: Any):
    self.model, self.data, self.config, self.constants = model, data, config, constants
    self._query = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                   method=PretrainModel.encode_query))
    self._item = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                  method=PretrainModel.encode_item))

  @staticmethod
  def _collect(fn, params, batches) -> np.ndarray:
    out = []
    for batch in batches:
      valid = np.asarray(batch.pop('valid'))
      vecs = distributed.to_host(fn(params, batch))
      out.append(vecs[valid])
    return np.concatenate(out).astype(np.float32)

  def queries(self, params, texts: list[str]) -> np.ndarray:
    batches = pipelines.query_batches(texts, self.data.tokenizer, self.config.eval.batch_size,
                                      self.config.data.query_len)
    return self._collect(self._query, params, batches)

  def items(self, params) -> np.ndarray:
    batches = pipelines.item_batches(self.data.builder, self.data.tokenizer,
                                     self.config.eval.batch_size, self.config.data.title_len)
    return self._collect(self._item, params, batches)


def evaluate(extractor: VectorExtractor, params, config, eval_set) -> dict[str, float]:
  evaluator = retrieval.RetrievalEvaluator(
      lambda p: extractor.queries(p, eval_set.queries), extractor.items, eval_set,
      ks=tuple(config.eval.ks), scann=config.eval.scann)
  return evaluator.run(params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Pre-trains on `config.data`, evaluates Recall@K etc., returns the flat results dict."""
  workdir = pathlib.Path(workdir)
  t_start = time.perf_counter()
  data = prepare_lib.prepare(config.data)
  with config.unlocked():
    config.model.vocab_size = data.tokenizer.vocab_size
    config.model.mask_token_id = data.tokenizer.mask_id
  info(f'data: {data.summary()}')

  mesh = sharding_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = sharding_lib.rules_from_config(config.axis_rules)
  model = PretrainModel(config.model)
  tx = optimizer_lib.make_optimizer(config.optim, config.train.num_steps)

  process_count, process_index, full_batches = distributed.input_shard(
      config.data.process_sharding)  # full_batches: see to_global
  train_ds = pipelines.pretrain_pairs(
      data.builder, data.tokenizer, batch_size=config.train.batch_size // process_count,
      seed=config.seed, query_len=config.data.query_len, title_len=config.data.title_len,
      shard_index=process_index, shard_count=process_count)
  train_iter = iter(train_ds)
  sample = next(iter(train_ds))  # shapes for init; a separate iterator, so no data is skipped

  init_rng = jax.random.key(config.seed)
  step_rng = state_lib.step_key_data(config.seed + 1, config.train.rng_impl)
  codebook = masking.fit_mpm_codebook(data.sample_images(seed=config.seed),
                                      config.model.patch_size, config.model.mpm_classes,
                                      seed=config.seed, grid=config.model.mpm_grid)

  def init_variables(rng):
    variables = model.init({'params': rng, 'dropout': rng, 'masking': rng}, sample, train=False)
    return set_codebook(variables, codebook)

  state, shardings = state_lib.create_sharded_state(init_variables, tx, init_rng, mesh, rules,
                                                     step_rng)
  if config.model.text_init == 'minilm':
    params = bert_import.init_text_encoder_from_minilm({'params': state.params})['params']
    state = state_lib.replace_params(state, tx, params, shardings)
  info(f'model: {state_lib.param_count(state.params):,} parameters; mesh {dict(mesh.shape)}')

  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.train.checkpoint_every)
  if checkpointer.latest_step is not None:
    state = checkpointer.restore(state, train_iter)
    info(f'resumed from {checkpointer.directory} at step {int(state.step)}')

  item_log_q = data.item_log_q()  # [N], the logQ correction of QIC's in-batch negatives
  logger = metrics_log.MetricsLogger(workdir)
  step_fn = make_train_step(model, tx, config.loss, mesh, shardings, config.train.rng_impl)
  start = int(state.step)

  def next_batch(step):
    del step  # the iterator's position is the step's
    host = next(train_iter)
    host['item_log_q'] = item_log_q[host['item_index']]
    return to_global(host, mesh, full=full_batches)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, last, train_seconds = loop.run(
        state, step_fn, next_batch, first_step=start + 1, num_steps=config.train.num_steps,
        log_every=config.train.log_every, checkpointer=checkpointer, data_iterator=train_iter,
        logger=logger, workdir=workdir, print_keys=(
            'loss/total', 'loss/qic', 'loss/qim', 'loss/mlm_title', 'loss/mpm',
            'train/qic_accuracy'))
  examples = (config.train.num_steps - start) * config.train.batch_size
  checkpointer.close()

  eval_set = data.eval_set
  extractor = VectorExtractor(model, data, config, state.constants)
  results = {}
  # Every process computes the vectors (cheap next to training); the metrics are identical.
  results.update(evaluate(extractor, state.params, config, eval_set))
  if 'random_init' in config.eval.baselines:
    # The same architecture and init RNG, untrained and without pretrained text weights.
    random_state, _ = state_lib.create_sharded_state(init_variables, tx, init_rng, mesh, rules,
                                                     step_rng)
    base = evaluate(extractor, random_state.params, config, eval_set)
    results.update({f'baseline/random_init/{k}': v for k, v in base.items()
                    if not k.startswith('scann_neighbour')})
    del random_state
  if 'bm25' in config.eval.baselines:
    ids = bm25.bm25_topk(eval_set.queries, [it.title for it in data.dataset.items],
                         max(config.eval.ks))
    base = retrieval.evaluate_ranking(ids, eval_set, tuple(config.eval.ks))
    results.update({f'baseline/bm25/{k}': v for k, v in base.items()})
  results.update({k: v for k, v in last.items() if k.startswith(('loss/', 'train/'))})
  results['train/steps'] = float(config.train.num_steps)
  if train_seconds > 0 and examples:
    results['perf/train_examples_per_sec'] = examples / train_seconds
  results['perf/total_seconds'] = time.perf_counter() - t_start
  logger.write_scalars(config.train.num_steps, {f'eval/{k}': v for k, v in results.items()})
  logger.close()
  return results
