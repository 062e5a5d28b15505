"""Stage-1 query and item vectors for stage 2: reuse a finished stage-1 run, or run it first.

The recall model reads stage-1 vectors as fixed inputs (DESIGN.md §2). They come from the
stage-1 workdir (`config.stage1_workdir`; by default `workdir/pretrain_default`, where
`python -m mmret.launch` puts its run, relative to the current directory): if that directory
holds a checkpoint at (or past) the stage-1 config's final step, the latest one is restored;
otherwise the stage-1 job is run there first (resuming from whatever checkpoint it has), by
the `run_job` function the job registry passes in. A finished run is reused only if its
config.json matches `config.stage1` (up to the keys that do not change a checkpoint's meaning,
mmret/config/changes.py); otherwise the job stops with the differing `stage1.*` keys listed,
since the vectors of the old model would not reflect them (set `stage1_workdir` to a new
directory to train stage 1 with them).
The vectors are cached as .npy in the recall workdir, keyed by the stage-1 run (directory,
checkpoint step, config) and the query list, so a retrained stage 1 is re-extracted:

  <workdir>/stage1_vectors/key.json           what the cache was made from (written last)
  <workdir>/stage1_vectors/queries.json       the query strings, in row order
  <workdir>/stage1_vectors/query_vectors.npy  float32 [Q, E]
  <workdir>/stage1_vectors/item_vectors.npy   float32 [N, E], catalog order
"""

from collections.abc import Callable
import hashlib
import json
import pathlib

import jax
import ml_collections
import numpy as np

from mmret.config import ConfigError
from mmret.config import changes
from mmret.data import prepare as prepare_lib
from mmret.jobs.pretrain import data as pretrain_data
from mmret.jobs.pretrain import evaluator as pretrain_evaluator
from mmret.jobs.pretrain import model as pretrain_model
from mmret.train import checkpoint as checkpoint_lib

RunJob = Callable[[ml_collections.ConfigDict, pathlib.Path], dict]


def stage1_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.stage1_workdir).expanduser() if config.stage1_workdir else (
      workdir / 'stage1')


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


def check_finished_run(stage1: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
  """Raises ConfigError when the finished run in `directory` had another config than `stage1`."""
  stored = directory / 'config.json'
  if not stored.is_file():
    return  # a run from before config.json was written: nothing to compare with
  try:
    changed = changes.config_changes(json.loads(stored.read_text()), stage1)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{stored}: unreadable ({e}); remove it or set another stage1_workdir.'
                      ) from None
  if changed:
    raise ConfigError(
        f'stage1_workdir {directory} holds a finished stage-1 run of another config '
        f'({len(changed)} key(s) differ: '
        f'{"; ".join("stage1." + c for c in changed[:6])}{"; ..." if len(changed) > 6 else ""})'
        '; its vectors would not reflect them: set --config.stage1_workdir to a new directory '
        'to train stage 1 with these keys, or drop them.')


def load_or_extract(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                    data: prepare_lib.PreparedData, queries: list[str], run_job: RunJob,
                    log=print) -> tuple[np.ndarray, np.ndarray]:
  """(query vectors [len(queries), E], item vectors [N, E]) of the stage-1 model.

  run_job(config, workdir): runs a job (mmret.jobs.run), for a stage 1 that is missing.
  """
  stage1 = config.stage1
  directory = stage1_workdir(config, workdir)
  latest = _latest_step(directory)
  # A run trained past the config's num_steps (e.g. with a --config.train.num_steps override)
  # is finished too; its latest checkpoint is the one restored.
  if latest is None or latest < stage1.train.num_steps:
    log(f'stage 1: no finished run in {directory}; running {stage1.job}:{stage1.variant} there')
    run_job(stage1, directory)
    latest = _latest_step(directory)
  else:
    check_finished_run(stage1, directory)

  cache = workdir / 'stage1_vectors'
  key_file = cache / 'key.json'
  key = _cache_key(stage1, directory, latest, queries)
  if key_file.exists() and json.loads(key_file.read_text()) == key:
    log(f'stage 1: cached vectors from {cache}')
    return np.load(cache / 'query_vectors.npy'), np.load(cache / 'item_vectors.npy')

  log(f'stage 1: restoring step {latest} in {directory}/checkpoints')
  sample = next(iter(pretrain_data.pairs(stage1, data)))  # shapes for the restore target
  model, state = pretrain_model.restore(stage1, data, directory, sample)
  # Stage 1's own towers: the same vectors its evaluation used.
  towers = pretrain_evaluator.Towers(model, data, stage1, state.constants)
  query_vectors = towers.queries(state.params, list(queries))
  item_vectors = towers.items(state.params)
  if jax.process_index() == 0:
    cache.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    np.save(cache / 'query_vectors.npy', query_vectors)
    np.save(cache / 'item_vectors.npy', item_vectors)
    (cache / 'queries.json').write_text(json.dumps(list(queries)))
    key_file.write_text(json.dumps(key, indent=2))  # last: marks the cache complete
  return query_vectors, item_vectors
