"""Stage-1 evaluation: the model's query and item vectors -> Recall@K etc. (DESIGN.md §5), and
the baselines that put them in context.

    towers = Towers(model, data, config, constants)
    q = towers.queries(params, texts)            # float32 [Q, D]
    items = towers.items(params)                 # float32 [N, D], catalog order
    results = evaluate(towers, params, config, data.eval_set)
"""

from typing import Any

import jax
import ml_collections
import numpy as np

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.evaluate import bm25
from mmret.evaluate import retrieval
from mmret.evaluate import vectors
from mmret.towers.pretrain import PretrainModel

_BM25_JUDGED_DEPTH = 10_000  # BM25 scores this many items per query for judged re-ranking


class Towers:
  """The query and item towers of a stage-1 model, jitted once, over text and the catalog."""

  def __init__(self, model: PretrainModel, data: prepare_lib.PreparedData,
               config: ml_collections.ConfigDict, constants: Any):
    self.data, self.config = data, config
    self._query = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                   method=PretrainModel.encode_query))
    self._item = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                  method=PretrainModel.encode_item))

  def queries(self, params, texts: list[str]) -> np.ndarray:
    batches = pipelines.query_batches(texts, self.data.tokenizer, self.config.eval.batch_size,
                                      self.config.data.query_len)
    return vectors.extract(self._query, params, batches, what='queries', total=len(texts))

  def items(self, params) -> np.ndarray:
    batches = pipelines.item_batches(self.data.builder, self.data.tokenizer,
                                     self.config.eval.batch_size, self.config.data.title_len)
    return vectors.extract(self._item, params, batches, what='items',
                           total=self.data.num_items)


def evaluate(towers: Towers, params, config: ml_collections.ConfigDict, eval_set,
             item_vectors: np.ndarray | None = None) -> dict[str, float]:
  """Recall@K / relevance@K of the eval queries against the catalog (ScaNN and exact);
  item_vectors [N, D]: the catalog's vectors under `params`, when already computed."""
  evaluator = retrieval.RetrievalEvaluator(eval_set, ks=tuple(config.eval.ks),
                                           scann=config.eval.scann,
                                           scann_params=config.eval.get('scann_params'))
  items = towers.items(params) if item_vectors is None else item_vectors
  return evaluator.run(towers.queries(params, eval_set.queries), items).metrics


def validate(towers: Towers, params, config: ml_collections.ConfigDict, val_set
             ) -> dict[str, float]:
  """Exact-search Recall@K / nDCG@K of the held-out training queries (model selection)."""
  evaluator = retrieval.RetrievalEvaluator(val_set, ks=tuple(config.eval.ks), scann=False)
  return evaluator.run(towers.queries(params, val_set.queries), towers.items(params)).metrics


def bm25_baseline(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData
                  ) -> dict[str, float]:
  """BM25 on titles (bm25s): 'baseline/bm25/<metric>'; its ndcg@K/judged re-ranks the judged
  items by their BM25 scores among the top _BM25_JUDGED_DEPTH (the rest rank last)."""
  eval_set = data.eval_set
  index = bm25.BM25Index([it.title for it in data.dataset.items])
  ks = tuple(config.eval.ks)
  _, ids = index.search(eval_set.queries, max(ks))
  base = retrieval.evaluate_ranking(ids, eval_set, ks)
  scores, ids = index.search(eval_set.queries, min(_BM25_JUDGED_DEPTH, index.num_items))
  base.update(retrieval.listed_judged_ndcg(ids, scores, eval_set, ks))
  return {f'baseline/bm25/{k}': v for k, v in base.items()}
