"""The Que2Engage job (DESIGN.md §4): engagement-aware multitask EBR, then its evaluation.

`train_and_evaluate(config, workdir)` trains and evaluates one model; the ablation of the
source's Table 1 is a sweep over config overrides declared in configs/engage.py (run by
mmret/jobs/sweep.py). The context encoder's BatchNorm statistics live in
`TrainState.constants['batch_stats']`: the generic step applies the model with
`mutable=['batch_stats']` and writes them back, so they are checkpointed with the params and
used (frozen) at evaluation.
"""

import functools
import pathlib
import time

import ml_collections

from mmret.data import prepare as prepare_lib
from mmret.data import records
from mmret.jobs.engage import data as data_lib
from mmret.jobs.engage import evaluator
from mmret.jobs.engage import objective
from mmret.towers.engage import EngageModel
from mmret.train import distributed
from mmret.train import model_dir
from mmret.train import runner as runner_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib
from mmret.train import step as step_lib
from mmret.train.progress import info

RNG_STREAMS = ('dropout', 'modality')
PRINT_KEYS = ('loss/total', 'loss/relevance', 'loss/engagement', 'train/accuracy')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Trains one Que2Engage model on `config.data`, evaluates it, returns the flat results."""
  data = prepare_lib.prepare(config.data)
  examples = data_lib.page_examples(data.dataset, 'train', config.data.max_page_negatives)
  info(f'data: {data.summary()}; {len(examples):,} engaged train impressions')
  data.require_eval_queries()
  data.require_train_positives()
  if not len(examples):  # clicks labelled `engaged: false` are positives, but no engagement
    raise records.DataError(
        data.dataset.root / records.INTERACTIONS_FILE, 0, 'engaged',
        'no train impression is engaged (engaged true; without that field, clicked or bought), '
        'so the engagement model has nothing to learn')
  runner = runner_lib.Runner(config, workdir)
  model = EngageModel(config.model, vocab_size=data.tokenizer.vocab_size)
  tx = runner.optimizer()

  count, index, full_batches = distributed.input_shard(config.data.process_sharding)
  train_ds = data_lib.engage_pages(
      examples, data.builder, data.tokenizer, batch_size=config.train.batch_size // count,
      seed=config.seed, num_negatives=config.data.num_negatives,
      query_len=config.data.query_len, title_len=config.data.title_len,
      trigram_buckets=config.model.trigram_buckets, max_trigrams=config.data.max_trigrams,
      shard_index=index, shard_count=count)
  train_iter = iter(train_ds)
  sample = next(iter(train_ds))  # shapes for init; a separate iterator, so no data is skipped

  def init_variables(rng):
    return model.init({name: rng for name in ('params', *RNG_STREAMS)}, sample, train=False)

  state, shardings = runner.create_state(init_variables, tx)
  info(f'model: {state_lib.param_count(state.params):,} parameters; '
       f'mesh {dict(runner.mesh.shape)}')
  step_fn = step_lib.make_train_step(
      model, tx, functools.partial(objective.engage_objective, loss=config.loss), runner.mesh,
      shardings, rng_streams=RNG_STREAMS, mutable=('batch_stats',),
      rng_impl=config.train.rng_impl)
  trained = runner.train(
      state, step_fn, train_iter,
      lambda step: sharding_lib.to_device(next(train_iter), runner.mesh, full=full_batches),
      print_keys=PRINT_KEYS, log_prefix=config.log_prefix)

  t_eval = time.perf_counter()
  with runner.context():
    towers = evaluator.Towers(model, data, config, trained.state.constants,
                              trained.state.params)
    results = evaluator.evaluate(towers, config, data)
  results['perf/eval_seconds'] = time.perf_counter() - t_eval
  model_dir.save_from_job(workdir, config, data, trained.state.params, trained.state.constants,
                          towers.item_vectors[()])
  return runner.epilogue(results, trained)
