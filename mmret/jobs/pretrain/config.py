"""The stage-1 job's own config checks; its choices are declared by the code that owns them."""

import ml_collections

from mmret.config import ConfigError
from mmret.config import checks as validate_lib
from mmret.data import positives
from mmret.encoders import image
from mmret.encoders import transformer
from mmret.jobs.pretrain import objective
from mmret.towers import config as model_config
from mmret.towers import heads

# config.eval.baselines: BM25 on titles; the model as initialised (with its imported text
# encoder, untrained); the same architecture randomly initialised.
BASELINES = ('bm25', 'pretrained_init', 'random_init')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the key (after the generic checks of mmret.config.checks).
  num_devices: unused (no device-dependent check of its own)."""
  del num_devices
  validate_lib.check_choices(config, {
      'model.pooling': heads.POOLINGS,
      'model.retrieval_space': model_config.RETRIEVAL_SPACES,
      'model.image_encoder': image.MODES,
      'model.attention': transformer.ATTENTIONS,
      'model.remat_policy': transformer.REMAT_POLICIES,
      'model.text_init': model_config.TEXT_INITS,
      'loss.qic': objective.QIC_VARIANTS,
      'data.positives': positives.CHOICES,
      'optim.mu_dtype': ('', 'float32', 'bfloat16'),
  })
  workers = config.data.get('workers', 0)
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise ConfigError(f'config key data.workers={workers!r}: must be an integer >= 0 '
                      '(0 = batches made in the training process).')
  multiple = config.data.get('length_multiple', 0)
  if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 0:
    raise ConfigError(f'config key data.length_multiple={multiple!r}: must be an integer >= 0 '
                      '(0 = fixed lengths).')
  select = config.get('select')
  if select is not None:
    every = select.every
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
      raise ConfigError(f'config key select.every={every!r}: must be an integer >= 0 (0 = no '
                        'model selection).')
    if not 0.0 <= select.share < 1.0:
      raise ConfigError(f'config key select.share={select.share!r}: the share of training '
                        'queries held out for validation must be in [0, 1).')
    floor = select.get('min_queries', 0)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
      raise ConfigError(f'config key select.min_queries={floor!r}: must be an integer >= 0 '
                        '(0 = no floor on the validation queries).')
  for name in config.eval.get('baselines', ()):
    if name not in BASELINES:
      raise ConfigError(f'config key eval.baselines: unknown baseline {name!r}; choose from '
                        f'{BASELINES}.')
