"""The Que2Engage model's towers as vector functions for mmret.evaluate.engagement."""

from typing import Any

import jax
import ml_collections
import numpy as np

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.evaluate import engagement
from mmret.evaluate import vectors
from mmret.jobs.engage import data as data_lib
from mmret.towers.engage import EngageModel

# Removing a modality = marking it absent through its presence flags (dropped and missing are
# one code path in the model, tested): one compiled function serves every removal.
_PRESENCE = {'text': 'text_present', 'image': 'image_present', 'context': 'context_present'}


class Towers:
  """Query vectors of any texts; catalog vectors with any modalities removed."""

  def __init__(self, model: EngageModel, data: prepare_lib.PreparedData,
               config: ml_collections.ConfigDict, constants: Any, params: Any):
    self.data, self.config, self.params = data, config, params
    self._query = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                   method=EngageModel.encode_query))
    self._doc = jax.jit(lambda p, b: model.apply({'params': p, **constants}, b,
                                                 method=EngageModel.encode_document))
    self._item_batches = None
    self.item_vectors = {}  # remove -> [N, E]: what evaluation searched (the model directory's)

  def queries(self, texts: list[str]) -> np.ndarray:
    c = self.config
    batches = pipelines.query_batches(texts, self.data.tokenizer, c.eval.batch_size,
                                      c.data.query_len, trigram_buckets=c.model.trigram_buckets,
                                      max_trigrams=c.data.max_trigrams)
    return vectors.extract(self._query, self.params, batches, what='queries',
                           total=len(texts))

  def items(self, remove: tuple[str, ...] = ()) -> np.ndarray:
    """[N, E] catalog vectors; `remove`d modalities are marked absent for every item."""
    if self._item_batches is None:  # read the catalog once for all removals
      self._item_batches = list(pipelines.item_batches(
          self.data.builder, self.data.tokenizer, self.config.eval.batch_size,
          self.config.data.title_len))
    absent = {_PRESENCE[m] for m in remove}
    batches = [{k: (np.zeros_like(v) if k in absent else v) for k, v in b.items()}
               for b in self._item_batches]
    self.item_vectors[tuple(remove)] = vectors.extract(
        self._doc, self.params, batches, what='items', total=self.data.num_items)
    return self.item_vectors[tuple(remove)]


def evaluate(towers: Towers, config: ml_collections.ConfigDict,
             data: prepare_lib.PreparedData) -> dict[str, float]:
  removals = [(), ('text',), ('image',)] + ([('context',)] if config.model.context_token else [])
  evaluator = engagement.EngagementEvaluator(
      data_lib.labelled_impressions(data.dataset, 'eval'), data.eval_set,
      ks=tuple(config.eval.ks), scann=config.eval.scann,
      scann_params=config.eval.get('scann_params'),
      relevant_min_grade=config.eval.relevant_min_grade, removals=removals)
  return evaluator.run(towers.queries, towers.items)
