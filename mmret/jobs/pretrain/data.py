"""Stage-1 training input: shuffled clicked (query, item) pairs, sharded over processes.

    train = TrainInput(config, data)
    state = ... train.sample ...                 # shapes for init (its own iterator)
    batch = train.next_batch(step)               # device batch, rows split over `data`

Every batch also carries `item_log_q` [B], the log click probability of each row's item: the
logQ correction of QIC's in-batch negatives (DESIGN.md §1).
"""

from typing import Any

import ml_collections

from mmret.data import pipelines
from mmret.data import prepare as prepare_lib
from mmret.train import distributed
from mmret.train import sharding as sharding_lib


def pairs(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData, *,
          shard_index: int = 0, shard_count: int = 1, batch_size: int | None = None):
  """The Grain dataset of pair batches of config.data (batch_size: per process)."""
  return pipelines.pretrain_pairs(
      data.builder, data.tokenizer,
      batch_size=batch_size or config.train.batch_size // shard_count, seed=config.seed,
      query_len=config.data.query_len, title_len=config.data.title_len,
      shard_index=shard_index, shard_count=shard_count)


class TrainInput:
  """This process's training batches; `iterator` is what the checkpoint saves."""

  def __init__(self, config: ml_collections.ConfigDict, data: prepare_lib.PreparedData, mesh):
    # full_batches: every process reads the whole global batch (sharding_lib.to_device).
    count, index, self.full_batches = distributed.input_shard(config.data.process_sharding)
    dataset = pairs(config, data, shard_index=index, shard_count=count)
    self.iterator = iter(dataset)
    self.sample: dict[str, Any] = next(iter(dataset))  # a separate iterator: nothing skipped
    self.mesh = mesh
    self.item_log_q = data.item_log_q()  # [N]

  def next_batch(self, step: int) -> dict:
    del step  # the iterator's position is the step's
    host = next(self.iterator)
    host['item_log_q'] = self.item_log_q[host['item_index']]
    return sharding_lib.to_device(host, self.mesh, full=self.full_batches)
