"""Stage-1 query and item vectors for stage 2: reuse a finished stage-1 run, or run it first.

The recall model reads stage-1 vectors as fixed inputs (DESIGN.md §2). They come from the
stage-1 workdir (`config.stage1_workdir`; by default `workdir/pretrain_default`, where
`python -m mmret.launch` puts its run, relative to the current directory): if that directory
holds a checkpoint at (or past) the stage-1 config's final step, the latest one is restored;
otherwise the stage-1 job is run there first (resuming from whatever checkpoint it has).
The vectors are cached as .npy in the recall workdir, keyed by the stage-1 run (directory,
checkpoint step, config) and the query list, so a retrained stage 1 is re-extracted:

  <workdir>/stage1_vectors/key.json           what the cache was made from (written last)
  <workdir>/stage1_vectors/queries.json       the query strings, in row order
  <workdir>/stage1_vectors/query_vectors.npy  float32 [Q, E]
  <workdir>/stage1_vectors/item_vectors.npy   float32 [N, E], catalog order
"""

import hashlib
import json
import pathlib

import jax
import ml_collections
import numpy as np

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.towers.pretrain import PretrainModel
from mmret.train import checkpoint as checkpoint_lib
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib


def stage1_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.stage1_workdir).expanduser() if config.stage1_workdir else (
      workdir / 'stage1')


def _restore_stage1(stage1: ml_collections.ConfigDict, data: prepare_lib.PreparedData,
                    directory: pathlib.Path):
  """The stage-1 model and its restored train state (the structure of mmret.train.pretrain)."""
  mesh = sharding_lib.make_mesh(stage1.mesh.shape, stage1.mesh.axes)
  rules = sharding_lib.rules_from_config(stage1.axis_rules)
  model = PretrainModel(stage1.model)
  tx = optimizer_lib.make_optimizer(stage1.optim, stage1.train.num_steps)
  sample = next(iter(pipelines.pretrain_pairs(
      data.builder, data.tokenizer, batch_size=stage1.train.batch_size, seed=0,
      query_len=stage1.data.query_len, title_len=stage1.data.title_len)))

  def init_variables(rng):  # shapes only: the checkpoint overwrites every value
    return model.init({'params': rng, 'dropout': rng, 'masking': rng}, sample, train=False)

  state, _ = state_lib.create_sharded_state(
      init_variables, tx, jax.random.key(stage1.seed), mesh, rules,
      state_lib.step_key_data(stage1.seed + 1, stage1.train.rng_impl))
  checkpointer = checkpoint_lib.Checkpointer(directory, every_steps=0)
  state = checkpointer.restore(state, None)
  checkpointer.close()
  return model, state


def _cache_key(stage1: ml_collections.ConfigDict, directory: pathlib.Path, step: int,
               queries: list[str]) -> dict:
  """What the cached vectors depend on: the stage-1 run (where, which step, which config) and
  the query list. A retrained or different stage-1 model never serves stale vectors."""
  config_hash = hashlib.sha256(
      stage1.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]
  queries_hash = hashlib.sha256(json.dumps(list(queries)).encode()).hexdigest()[:16]
  return {'stage1_workdir': str(directory.absolute()), 'stage1_step': int(step),
          'stage1_config': config_hash, 'queries': queries_hash}


def _latest_step(directory: pathlib.Path) -> int | None:
  checkpointer = checkpoint_lib.Checkpointer(directory, every_steps=0)
  latest = checkpointer.latest_step
  checkpointer.close()
  return latest


def load_or_extract(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                    data: prepare_lib.PreparedData, queries: list[str], log=print
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(query vectors [len(queries), E], item vectors [N, E]) of the stage-1 model."""
  stage1 = config.stage1
  with stage1.unlocked():  # as the stage-1 job sets them, so the cache key sees the same config
    stage1.model.vocab_size = data.tokenizer.vocab_size
    stage1.model.mask_token_id = data.tokenizer.mask_id
  directory = stage1_workdir(config, workdir)
  latest = _latest_step(directory)
  # A run trained past the config's num_steps (e.g. with a --config.train.num_steps override)
  # is finished too; its latest checkpoint is the one restored.
  if latest is None or latest < stage1.train.num_steps:
    from mmret import jobs  # pylint: disable=g-import-not-at-top  (jobs imports this lazily)
    log(f'stage 1: no finished run in {directory}; running {stage1.job}:{stage1.variant} there')
    jobs.run(stage1, directory)
    latest = _latest_step(directory)

  cache = workdir / 'stage1_vectors'
  key_file = cache / 'key.json'
  key = _cache_key(stage1, directory, latest, queries)
  if key_file.exists() and json.loads(key_file.read_text()) == key:
    log(f'stage 1: cached vectors from {cache}')
    return np.load(cache / 'query_vectors.npy'), np.load(cache / 'item_vectors.npy')

  log(f'stage 1: restoring step {latest} in {directory}/checkpoints')
  model, state = _restore_stage1(stage1, data, directory)
  # The extractor is stage 1's own (pretrain.VectorExtractor): the same vectors its eval used.
  from mmret.train import pretrain  # pylint: disable=g-import-not-at-top
  extractor = pretrain.VectorExtractor(model, data, stage1, state.constants)
  query_vectors = extractor.queries(state.params, list(queries))
  item_vectors = extractor.items(state.params)
  if jax.process_index() == 0:
    cache.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    np.save(cache / 'query_vectors.npy', query_vectors)
    np.save(cache / 'item_vectors.npy', item_vectors)
    (cache / 'queries.json').write_text(json.dumps(list(queries)))
    key_file.write_text(json.dumps(key, indent=2))  # last: marks the cache complete
  return query_vectors, item_vectors
