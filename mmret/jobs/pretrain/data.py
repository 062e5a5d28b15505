"""Stage-1 training input: shuffled clicked (query, item) pairs, sharded over processes.

    train = TrainInput(config, data)
    state = ... train.sample ...                 # shapes for init (its own iterator)
    batch = train.next_batch(step)               # device batch, rows split over `data`

Every batch also carries `item_log_q` [B], the log click probability of each row's item: the
logQ correction of QIC's in-batch negatives (DESIGN.md §1). When the train split holds judged-
irrelevant pairs and config.loss.judged_negatives = H > 0, it also carries H of the row's
query's judged-irrelevant items (mmret.data.judged), flattened row-major to B * H rows:
neg_title_tokens/neg_title_mask [B*H, Lt], neg_image [B*H, S, S, 3], neg_image_present,
neg_text_present, neg_item_index [B*H] and neg_valid bool [B*H] (False: the query has none).
With config.data.length_multiple > 0 the query and title fields are cut to the batch's length
bucket (mmret/data/length_buckets.py; the init sample keeps the full lengths).
"""

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from mmret.data import features
from mmret.data import judged
from mmret.data import length_buckets
from mmret.data import pipelines
from mmret.data import positives
from mmret.data import prepare as prepare_lib
from mmret.train import distributed
from mmret.train import sharding as sharding_lib


def pairs(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData, *,
          shard_index: int = 0, shard_count: int = 1, batch_size: int | None = None,
          held_out: Sequence[str] = ()):
  """The Grain dataset of pair batches of config.data (batch_size: per process), without the
  pairs of the `held_out` queries (the validation split)."""
  queries = pipelines.query_vocabulary(data.builder)
  vocabulary = {q: i for i, q in enumerate(queries)}
  only = None
  if positives.check(config.data.get('positives', 'all')) == 'most_clicked':
    only = positives.most_clicked_pairs(data.dataset, queries)
  keep = positives.training_rows(data.dataset, queries, only=only,
                                 exclude_queries=frozenset(vocabulary[q] for q in held_out))
  return pipelines.pretrain_pairs(
      data.builder, data.tokenizer, keep=keep,
      batch_size=batch_size or config.train.batch_size // shard_count, seed=config.seed,
      query_len=config.data.query_len, title_len=config.data.title_len,
      shard_index=shard_index, shard_count=shard_count, workers=config.data.get('workers', 0))


class TrainInput:
  """This process's training batches; `iterator` is what the checkpoint saves."""

  def __init__(self, config: ml_collections.ConfigDict, data: prepare_lib.PreparedData, mesh,
               held_out: Sequence[str] = ()):
    # full_batches: every process reads the whole global batch (sharding_lib.to_device).
    count, index, self.full_batches = distributed.input_shard(config.data.process_sharding)
    dataset = pairs(config, data, shard_index=index, shard_count=count, held_out=held_out)
    self.iterator = iter(dataset)
    self.mesh = mesh
    self.item_log_q = data.item_log_q()  # [N]
    self.seed, self.data, self.config = config.seed, data, config
    num = config.loss.get('judged_negatives', 0)
    table = judged.judged_negatives(data.dataset, pipelines.query_vocabulary(data.builder))
    # Without any judged-irrelevant train pair the batch keeps its usual fields (and shapes).
    self.negatives = table if num and any(t.size for t in table) else None
    self.items = features.ItemSource(data.builder.data_dir)
    first = iter(dataset)  # its own iterator: `iterator` skips nothing
    self.sample: dict[str, Any] = self._host(next(first), -1)
    if hasattr(first, 'close'):
      first.close()  # with data.workers, its worker processes

  def _host(self, host: dict, step: int) -> dict:
    host['item_log_q'] = self.item_log_q[host['item_index']]
    if self.negatives is None:
      return host
    # Seeded by (seed, step): a resumed run draws the same negatives.
    rng = np.random.default_rng((self.seed, step + 1))
    items, valid = judged.sample_judged_negatives(
        rng, self.negatives, host['query_index'], self.config.loss.judged_negatives)
    rows = self.items.rows(items.ravel().tolist())  # `items` rows: item_index too
    neg = features.item_features(rows, self.data.tokenizer, self.config.data.title_len)
    for key in ('title_tokens', 'title_mask', 'image', 'image_present', 'text_present',
                'item_index'):
      host[f'neg_{key}'] = neg[key]
    host['neg_valid'] = valid.ravel()
    return host

  def next_batch(self, step: int) -> dict:
    host = self._host(next(self.iterator), step)  # the iterator's position is the step's
    host = length_buckets.cut(host, self.config.data.get('length_multiple', 0),
                              agree=None if self.full_batches else distributed.agree_max)
    return sharding_lib.to_device(host, self.mesh, full=self.full_batches)
