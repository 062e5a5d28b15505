"""The stage-1 job: multimodal pre-training (DESIGN.md §1), then retrieval evaluation (§5).

`train_and_evaluate(config, workdir)` is the whole job and is importable from a notebook; the
shared runner (mmret/train/runner.py) owns the mesh, state, checkpoints and loop, and the
generic step (mmret/train/step.py) is applied to this job's model and objective.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from mmret.config import ConfigError
from mmret.data import evalset
from mmret.data import prepare as prepare_lib
from mmret.jobs.pretrain import data as data_lib
from mmret.jobs.pretrain import evaluator
from mmret.jobs.pretrain import model as model_lib
from mmret.jobs.pretrain import objective
from mmret.train import model_dir
from mmret.train import runner as runner_lib
from mmret.train import selection
from mmret.train import state as state_lib
from mmret.train import step as step_lib
from mmret.train.progress import info

PRINT_KEYS = ('loss/total', 'loss/qic', 'loss/qim', 'loss/mlm_title', 'loss/mpm',
              'train/qic_accuracy')


# Baselines search the same catalog: the search's own figures are reported once, for the model.
_MODEL_ONLY = ('scann_neighbour', 'search/', 'perf/')


def lift(results: dict[str, float], initial: dict[str, float]) -> dict[str, float]:
  """'lift/<metric>': the trained model minus its untrained initialisation, for every recall,
  nDCG and relevance metric both report: the margin a fine-tuning recipe must keep positive
  (a sweep reports its mean and spread over seeds)."""
  return {f'lift/{k}': results[k] - v for k, v in initial.items()
          if k.startswith(('recall@', 'ndcg@', 'relevance@')) and k in results}


def _selector(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData,
              towers: evaluator.Towers, held_out: list[str], params, workdir
              ) -> selection.Selector:
  """Model selection on the held-out training queries, the initialisation already scored; its
  state is kept in <workdir>/selection for a resumed run."""
  val_set = evalset.build_eval_set(data.dataset, split='train', queries=set(held_out))
  selector = selection.Selector(
      functools.partial(evaluator.validate, towers, config=config, val_set=val_set),
      metric=config.select.metric, every=config.select.every, num_steps=config.train.num_steps,
      directory=pathlib.Path(workdir) / 'selection')
  info(f'validation: {len(val_set.queries)} training queries held out by hash for model '
       f'selection on {config.select.metric} every {config.select.every} steps')
  try:
    selector.start(params)
  except KeyError as e:
    raise ConfigError(f'config key select.metric={config.select.metric!r}: {e.args[0]}') from e
  return selector


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Pre-trains on `config.data`, evaluates Recall@K etc., returns the flat results dict."""
  data = prepare_lib.prepare(config.data)
  info(f'data: {data.summary()}')
  data.require_eval_queries()
  data.require_train_positives()
  runner = runner_lib.Runner(config, workdir)
  model = model_lib.build_model(config, data)
  tx = runner.optimizer(model_lib.pretrained_keys(config))
  held_out = model_lib.validation_split(config, data)
  train = data_lib.TrainInput(config, data, runner.mesh, held_out=held_out)
  init = model_lib.Initialiser(model, train.sample, model_lib.fit_codebook(config, data))
  state, shardings = runner.create_state(init, tx)
  state = model_lib.init_text_encoder(config, state, tx, shardings)
  info(f'model: {state_lib.param_count(state.params):,} parameters; '
       f'mesh {dict(runner.mesh.shape)}')
  # A copy of the constants: training donates the state's buffers.
  towers = evaluator.Towers(model, data, config, jax.tree.map(jnp.copy, state.constants))
  selector = (_selector(config, data, towers, held_out, state.params, workdir) if held_out
              else None)
  # The baseline that matters for an imported encoder: the same model before any training
  # (with text_init='random' it is the random_init baseline). A copy: training donates the
  # state's buffers.
  initial = (jax.tree.map(jnp.copy, state.params)
             if 'pretrained_init' in config.eval.baselines else None)

  step_fn = step_lib.make_train_step(
      model, tx,
      functools.partial(objective.pretrain_objective, loss=model_lib.effective_loss(config, data)),
      runner.mesh, shardings, rng_streams=model_lib.RNG_STREAMS, rng_impl=config.train.rng_impl)
  trained = runner.train(state, step_fn, train.iterator, train.next_batch,
                         print_keys=PRINT_KEYS, after_step=selector,
                         log_prefix=config.get('log_prefix', ''))

  # Every process computes the vectors (cheap next to training); the metrics are identical.
  # With a selector, trained.state holds the best validated parameters.
  item_vectors = towers.items(trained.state.params)
  results = evaluator.evaluate(towers, trained.state.params, config, data.eval_set,
                               item_vectors=item_vectors)
  model_dir.save_from_job(workdir, config, data, trained.state.params, trained.state.constants,
                          item_vectors)
  if selector is not None:
    info(selector.summary())
    results.update(selector.results())
  if initial is not None:
    base = evaluator.evaluate(towers, initial, config, data.eval_set)
    results.update({f'baseline/pretrained_init/{k}': v for k, v in base.items()
                    if not k.startswith(_MODEL_ONLY)})
    results.update(lift(results, base))
    del initial
  if 'random_init' in config.eval.baselines:
    # The same architecture and init RNG, untrained and without pretrained text weights.
    random_state, _ = runner.create_state(init, tx)
    base = evaluator.evaluate(towers, random_state.params, config, data.eval_set)
    results.update({f'baseline/random_init/{k}': v for k, v in base.items()
                    if not k.startswith(_MODEL_ONLY)})
    del random_state
  if 'bm25' in config.eval.baselines:
    results.update(evaluator.bm25_baseline(config, data))
  return runner.epilogue(results, trained)
