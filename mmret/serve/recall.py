"""A trained recall (stage-2) variant read back from its model directory
(mmret/jobs/recall/model_files.py), with the interface of mmret.serve.Model:

    model = Model.load('workdir/recall', variant='gate_add')   # -> RecallServeModel
    q = model.encode_queries(['red floral dress'])   # float32 [Q, D]: fused query vectors
    v = model.encode_items(records)                   # float32 [N, D]: fused item vectors

A query's ID is its string, as in the job: a query of the train vocabulary reads its row of the
query-ID table, any other its hashed bucket (mmret.embeddings.hashing, same salt and bucket
count). An item reads its ID row the same way (an item without a train impression, or not in
the catalog, its bucket); its gate statistics and category are the catalog's for a catalog item,
zero statistics (never shown) and its record's category for a new one. The content inputs are
the stage-1 vectors, computed by the stage-1 model copied into the directory.
"""

import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmret.data import records
from mmret.serve import catalog
from mmret.embeddings import hashing
from mmret.embeddings import tables
from mmret.evaluate import vectors as vectors_lib
from mmret.jobs.recall import model_files
from mmret.towers import recall as recall_model
from mmret.train import model_dir


class RecallServeModel(catalog.Catalog):
  """See the module docstring. Each encode call jits once per batch shape."""

  job = 'recall'

  def __init__(self, files: model_dir.ModelFiles, stage1):
    """files: the variant's model directory; stage1: its stage1/ directory loaded as a
    mmret.serve.Model (the content vectors; its batch size is used here too)."""
    self.files, self.config, self.tokenizer = files, files.config, files.tokenizer
    model_dir.check(files.directory, model_files.FILES)
    base = files.directory / model_files.RECALL_DIR
    ids = json.loads((base / 'ids.json').read_text())
    self.ids = ids
    self.fusion = ids['fusion']
    self.query_vocab = hashing.IdVocabulary(ids['query_known'], ids['query_buckets'],
                                            ids['query_salt'])
    self.item_vocab = hashing.IdVocabulary(ids['item_known'], ids['item_buckets'],
                                           ids['item_salt'])
    self.query_table = np.load(base / 'query_table.npy')
    self.item_table = np.load(base / 'item_table.npy')
    # On the device once, not with every batch.
    self._tables = {'query': jnp.asarray(self.query_table), 'item': jnp.asarray(self.item_table)}
    self.item_stats = np.load(base / 'item_stats.npy')
    self.item_category = np.load(base / 'item_category.npy')
    self.eval_queries = list(ids['eval_queries'])
    self.eval_query_vectors = np.load(base / 'eval_query_vectors.npy')
    self._categories = {c: k + 1 for k, c in enumerate(ids['categories'])}
    self._catalog = {it['item_id']: i for i, it in enumerate(files.items)}
    self.stage1 = stage1
    self.batch_size = self.stage1.batch_size
    self.variables = files.variables
    self.module = recall_model.RecallModel(self.config.model,
                                           num_categories=ids['num_categories'])
    module, use_ids = self.module, recall_model.uses_ids(self.fusion)

    def id_input(table, rows):
      if use_ids:
        return tables.lookup(table, rows)
      return jnp.zeros((rows.shape[0], table.shape[1]), jnp.float32)

    self._query = jax.jit(lambda v, b: module.apply(
        v, id_input(b['table'], b['rows']), b['mm'],
        method=recall_model.RecallModel.encode_query)['query_vec'])
    self._item = jax.jit(lambda v, b: module.apply(
        v, id_input(b['table'], b['rows']), b['mm'], b['stats'], b['category'],
        method=recall_model.RecallModel.encode_item)['item_vec'])

  def _batches(self, table: jax.Array, columns: dict[str, np.ndarray]):
    """Fixed-size chunks (one compiled program) of per-row columns, padded, with `valid`."""
    size, n = self.batch_size, len(columns['rows'])
    for start in range(0, n, size):
      chunk = {k: v[start:start + size] for k, v in columns.items()}
      m = len(chunk['rows'])
      batch = {k: np.pad(v, [(0, size - m)] + [(0, 0)] * (v.ndim - 1))
               for k, v in chunk.items()}
      yield {**batch, 'table': table, 'valid': np.arange(size) < m}

  def query_inputs(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """rows int32 [Q] (query-ID table row of each string), mm float32 [Q, E] (stage 1)."""
    return {'rows': self.query_vocab.rows(texts), 'mm': self.stage1.encode_queries(texts)}

  def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
    """Query strings -> float32 [Q, D] fused query vectors."""
    texts = [str(t) for t in texts]
    if not texts:
      return np.zeros((0, self.item_vectors.shape[1]), np.float32)
    return vectors_lib.extract(self._query, self.variables,
                               self._batches(self._tables['query'], self.query_inputs(texts)))

  def item_inputs(self, items: Sequence[records.Item]) -> dict[str, np.ndarray]:
    """rows int32 [N], mm float32 [N, E], stats float32 [N, 3], category int32 [N]."""
    index = [self._catalog.get(it.item_id) for it in items]
    stats = np.stack([self.item_stats[i] if i is not None else np.zeros(3, np.float32)
                      for i in index]).astype(np.float32)
    category = np.array([self._categories.get(it.category, 0) if it.category else 0
                         for it in items], np.int32)
    return {'rows': self.item_vocab.rows([it.item_id for it in items]),
            'mm': self.stage1.encode_items(items), 'stats': stats, 'category': category}

  def encode_items(self, items: Sequence[records.Item] | str | pathlib.Path) -> np.ndarray:
    """BYOD items (or a BYOD directory) -> float32 [N, D] fused item vectors."""
    if isinstance(items, (str, pathlib.Path)):
      items = records.load_dataset(items, check_images=True).items
    items = list(items)
    if not items:
      return np.zeros((0, self.item_vectors.shape[1]), np.float32)
    return vectors_lib.extract(self._item, self.variables,
                               self._batches(self._tables['item'], self.item_inputs(items)))
