"""The model directory of one recall variant (`<workdir>/<fusion>/model/`): the stage-1 model
directory's files (mmret/train/model_dir.py; config = the recall config of this fusion,
variables = the fusion towers, item_vectors = the fused item vectors the evaluation searched)
plus what the fused towers read besides the stage-1 vectors:

  recall/ids.json              fusion, ID vocabularies (known IDs in row order, buckets, salts:
                               an unseen ID's row is rebuilt exactly as in training,
                               mmret.embeddings.hashing), category names, eval queries
  recall/query_table.npy       float32 [query rows, d]: the final query-ID table
  recall/item_table.npy        float32 [item rows, d]: the final item-ID table
  recall/item_stats.npy        float32 [N, 3]: the gate's train statistics, catalog order
  recall/item_category.npy     int32 [N]: 1 + category index (0 = none), catalog order
  recall/eval_query_vectors.npy  float32 [Q, D]: the fused vectors of ids.json's eval queries
  stage1/                      a copy of the stage-1 model directory (the content vectors of
                               new query texts and item records)

Everything is written before model_dir.save writes format.json, so a directory with format.json
is complete.
"""

import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np

from mmret.evaluate import vectors as vectors_lib
from mmret.files import write_text_atomic
from mmret.train import model_dir
from mmret.train.progress import info

RECALL_DIR = 'recall'
STAGE1_DIR = 'stage1'
FILES = ('recall/ids.json', 'recall/query_table.npy', 'recall/item_table.npy',
         'recall/item_stats.npy', 'recall/item_category.npy', 'recall/eval_query_vectors.npy',
         'stage1/format.json')


def category_names(items) -> list[str]:
  """The categories in the order of ItemStats.category (index k -> value k + 1)."""
  return sorted({it.category for it in items if it.category})


def _rows(table, num_rows: int) -> np.ndarray:
  """A row-sharded (padded) table -> its first num_rows rows on this host."""
  return vectors_lib.to_host(table)[:num_rows].astype(np.float32)


def save(directory: pathlib.Path, config: ml_collections.ConfigDict, fusion: str, ctx, state,
         query_vectors: np.ndarray, item_vectors: np.ndarray,
         stage1_model: pathlib.Path) -> None:
  """Writes `directory` (every process gathers the tables; process 0 writes).

  ctx: the job's Context; state: the variant's trained RecallState; query_vectors float32
  [Q, D] of ctx.eval_set.queries and item_vectors float32 [N, D] from the evaluation.
  """
  maps = ctx.maps
  query_table = _rows(state.query_table.table, maps.query_vocab.num_rows)
  item_table = _rows(state.item_table.table, maps.item_vocab.num_rows)
  params = jax.tree.map(vectors_lib.to_host, state.params)
  trained_on = vectors_lib.to_host(ctx.frozen['item_vectors'])[:ctx.data.num_items]
  if jax.process_index() != 0:
    return
  directory = pathlib.Path(directory)
  (directory / 'format.json').unlink(missing_ok=True)
  (directory / RECALL_DIR).mkdir(parents=True, exist_ok=True)
  ids = {'fusion': fusion, 'num_categories': int(ctx.stats.num_categories),
         'categories': category_names(ctx.data.dataset.items),
         'query_known': maps.query_vocab.known, 'query_buckets': maps.query_vocab.num_buckets,
         'query_salt': maps.query_vocab.salt, 'item_known': maps.item_vocab.known,
         'item_buckets': maps.item_vocab.num_buckets, 'item_salt': maps.item_vocab.salt,
         'eval_queries': list(ctx.eval_set.queries)}
  write_text_atomic(directory / RECALL_DIR / 'ids.json', json.dumps(ids) + '\n')
  for name, value in (('query_table', query_table), ('item_table', item_table),
                      ('item_stats', ctx.stats.gate_features()),
                      ('item_category', ctx.stats.category.astype(np.int32)),
                      ('eval_query_vectors', np.asarray(query_vectors, np.float32))):
    np.save(directory / RECALL_DIR / f'{name}.npy', value)
  copied = np.load(pathlib.Path(stage1_model) / 'item_vectors.npy')
  if copied.shape != trained_on.shape or not np.allclose(copied, trained_on, atol=1e-4):
    info(f'warning: {stage1_model} is not the stage-1 model whose vectors {fusion} was '
         'trained on (its catalog vectors differ); new texts and items will be encoded by it.')
  if (directory / STAGE1_DIR).exists():
    shutil.rmtree(directory / STAGE1_DIR)
  shutil.copytree(stage1_model, directory / STAGE1_DIR)
  variant_config = ml_collections.ConfigDict(config.to_dict())
  variant_config.variants = (fusion,)
  variant_config.model.fusion = fusion
  model_dir.save(directory, config=variant_config, tokenizer=ctx.data.tokenizer,
                 variables={'params': params}, items=ctx.data.dataset.items,
                 item_vectors=item_vectors, context_names=ctx.data.dataset.context_names)
