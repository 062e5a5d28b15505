"""The recall job's own config checks (configs/recall.py), including its embedded stage 1."""

import ml_collections

from mmret.config import ConfigError
from mmret.config import checks as validate_lib
from mmret.embeddings import sparse_optim
from mmret.jobs.pretrain import config as pretrain_config
from mmret.towers import recall as recall_model


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Fusions, ID optimizer, negatives, cold dropout, and config.stage1 as a stage-1 config
  (on `num_devices`, default jax.device_count())."""
  validate_lib.check_choices(config, {'id_optim.name': sparse_optim.NAMES})
  if not config.variants:
    raise ConfigError('config key variants is empty: name at least one fusion.')
  for key in ('variants', 'train.cold_dropout_fusions'):
    for name in (config.variants if key == 'variants' else config.train.cold_dropout_fusions):
      if name not in recall_model.FUSIONS:
        raise ConfigError(f'config key {key}: {name!r} is not a fusion; choose from '
                          f'{recall_model.FUSIONS}.')
  validate_lib.positive_int(config, 'negatives.num')
  validate_lib.probability(config, 'train.cold_dropout',
                           'a dropout probability (0 disables)')
  if config.stage1.train.num_steps < 1:
    raise ConfigError('config key stage1.train.num_steps must be >= 1: the recall job reads the '
                      'stage-1 vectors from its checkpoint.')
  with validate_lib.prefixed('stage1.'):  # the stage-1 job it embeds, validated as its own
    validate_lib.validate(config.stage1, num_devices)
    pretrain_config.validate(config.stage1)
