"""The Que2Engage job's own config checks (configs/engage.py)."""

import ml_collections

from mmret.config import ConfigError
from mmret.config import checks as validate_lib
from mmret.encoders import image
from mmret.encoders import transformer


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Dropout rates, loss scale, page negatives; raises ConfigError naming the key.
  num_devices: unused (no device-dependent check of its own)."""
  del num_devices
  validate_lib.check_choices(config, {
      'model.image_encoder': image.MODES, 'model.attention': transformer.ATTENTIONS,
      'model.remat_policy': transformer.REMAT_POLICIES})
  for name in config.model.modality_dropout:
    validate_lib.probability(config, f'model.modality_dropout.{name}', 'a dropout probability')
  if config.loss.scale <= 0:
    raise ConfigError(f'config key loss.scale={config.loss.scale}: must be > 0.')
  for key in ('num_negatives', 'max_page_negatives'):
    if config.data[key] < 0:
      raise ConfigError(f'config key data.{key}={config.data[key]}: must be >= 0.')
  if config.data.num_negatives > config.data.max_page_negatives:
    raise ConfigError(f'config key data.num_negatives={config.data.num_negatives} exceeds '
                      f'data.max_page_negatives={config.data.max_page_negatives}.')
  if config.loss.mixed_negatives and config.data.num_negatives == 0:
    raise ConfigError('config key loss.mixed_negatives=True needs data.num_negatives > 0 '
                      '(the page negatives to mix in).')
