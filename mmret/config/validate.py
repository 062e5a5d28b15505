"""Config validation before anything compiles: impossible combinations fail with the key named.

Unknown keys and wrong types are already rejected by the locked ConfigDict (see loading.py);
this module checks values and their combinations.
"""

import pathlib

import ml_collections

from mmret.config.loading import ConfigError

_QIC = ('sigmoid', 'softmax', 'am_softmax')
_WIDTH_KEYS = ('width', 'hidden_size', 'emb_dim')
_HEAD_KEYS = ('heads', 'num_heads')
# Keys whose value must be one of a fixed set of choices (checked where the key exists).
_CHOICES = {
    'model.pooling': ('mean', 'cls'),
    'model.retrieval_space': ('encoder', 'qic'),
    'model.image_encoder': ('resnet', 'linear', 'features'),
    'model.text_init': ('minilm', 'random'),
    'train.rng_impl': ('rbg', 'unsafe_rbg', 'threefry2x32'),
    'data.process_sharding': ('per_process', 'global_batch'),
    'optim.name': ('adamw', 'adam', 'sgd'),
    # Stage 2 (configs/recall.py); mirrors mmret.towers.recall.FUSIONS and
    # mmret.embeddings.sparse_optim.NAMES (not imported: validation stays free of JAX).
    'model.fusion': ('id_only', 'mm_only', 'add', 'concat', 'gate_add', 'gate_concat'),
    'id_optim.name': ('rowwise_adagrad', 'adam'),
}


def _walk(config: ml_collections.ConfigDict, prefix: str = ''):
  yield prefix, config
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _walk(v, f'{prefix}{k}.')


def _positive_int(config, key: str) -> None:
  node, leaf = config, key
  for part in key.split('.')[:-1]:
    node = node[part]
  leaf = key.split('.')[-1]
  value = node[leaf]
  if not isinstance(value, int) or value <= 0:
    raise ConfigError(f'config key {key!r}={value!r}: must be a positive integer.')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the offending key. `num_devices` defaults to jax.device_count()."""
  for prefix, node in _walk(config):
    width = next((node[k] for k in _WIDTH_KEYS if k in node), None)
    heads_key = next((k for k in _HEAD_KEYS if k in node), None)
    if width is not None and heads_key is not None:
      heads = node[heads_key]
      if not isinstance(heads, int) or heads <= 0 or width % heads:
        raise ConfigError(f'config key {prefix}{heads_key}={heads!r}: the width {width} is not '
                          f'divisible by the number of heads.')

  for key, choices in _CHOICES.items():
    section, leaf = key.split('.')
    if section in config and leaf in config[section] and config[section][leaf] not in choices:
      raise ConfigError(f'config key {key}={config[section][leaf]!r}: choose from {choices}.')

  if 'variants' in config:
    fusions = _CHOICES['model.fusion']
    if not config.variants:
      raise ConfigError('config key variants is empty: name at least one fusion.')
    for name in config.variants:
      if name not in fusions:
        raise ConfigError(f'config key variants: {name!r} is not a fusion; choose from '
                          f'{fusions}.')
  if 'negatives' in config:
    _positive_int(config, 'negatives.num')
  if 'stage1' in config:  # the stage-1 job a stage-2 config embeds: validated as its own
    try:
      validate(config.stage1, num_devices)
    except ConfigError as e:
      message = str(e).replace('config key ', 'config key stage1.')
      raise ConfigError(message.replace("stage1.'", "'stage1.")) from e

  if 'train' in config:
    for key in ('batch_size', 'num_steps', 'log_every'):
      if key in config.train:
        _positive_int(config, f'train.{key}')
    if 'checkpoint_every' in config.train and config.train.checkpoint_every < 0:
      raise ConfigError('config key train.checkpoint_every must be >= 0 (0 disables).')
    if 'cold_dropout' in config.train:  # stage 2: cold-start dropout probability
      rate = config.train.cold_dropout
      if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f'config key train.cold_dropout={rate!r}: a dropout probability '
                          'must be in [0, 1] (0 disables).')
    for name in config.train.get('cold_dropout_fusions', ()):
      if name not in _CHOICES['model.fusion']:
        raise ConfigError(f'config key train.cold_dropout_fusions: {name!r} is not a fusion; '
                          f'choose from {_CHOICES["model.fusion"]}.')

  if 'loss' in config:
    if 'qic' in config.loss and config.loss.qic not in _QIC:
      raise ConfigError(f'config key loss.qic={config.loss.qic!r}: choose from {_QIC}.')
    for name, weight in config.loss.get('weights', {}).items():
      if weight < 0:
        raise ConfigError(f'config key loss.weights.{name}={weight}: weights must be >= 0.')
    if 'temperature' in config.loss and config.loss.temperature <= 0:
      raise ConfigError(f'config key loss.temperature={config.loss.temperature}: must be > 0.')

  _check_engage(config)

  if 'eval' in config and 'ks' in config.eval:
    if not config.eval.ks or any(not isinstance(k, int) or k <= 0 for k in config.eval.ks):
      raise ConfigError(f'config key eval.ks={config.eval.ks!r}: positive integers required.')

  if 'data' in config:
    source = config.data.get('source', 'synthshop')
    if source != 'synthshop' and not pathlib.Path(source).expanduser().is_dir():
      raise ConfigError(f'config key data.source={source!r}: not "synthshop" and not a '
                        'directory in the bring-your-own-data format (docs/DATA.md).')
    if 'image_size' in config.data and 'model' in config:
      patch = config.model.get('patch_size')
      if patch and config.data.image_size % patch:
        raise ConfigError(f'config key model.patch_size={patch}: does not divide '
                          f'data.image_size={config.data.image_size}.')

  if 'mesh' in config and 'train' in config:
    _check_mesh(config, num_devices)


# The rows of the Que2Engage ablation (mmret.train.engage.ABLATION_ROWS; kept here so that
# validation does not import the trainer).
_ENGAGE_ROWS = ('contrastive', 'context', 'mixed_negatives', 'multitask', 'multitask_dropout')


def _check_engage(config):
  """Que2Engage keys (configs/engage.py): dropout rates, loss scale, page negatives, ablation."""
  if 'model' in config and 'modality_dropout' in config.model:
    for name, rate in config.model.modality_dropout.items():
      if not 0.0 <= rate <= 1.0:
        raise ConfigError(f'config key model.modality_dropout.{name}={rate}: a dropout '
                          'probability must be in [0, 1].')
  if config.get('job') != 'engage':
    return
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
  for row in config.ablation.rows:
    if row not in _ENGAGE_ROWS:
      raise ConfigError(f'config key ablation.rows: unknown row {row!r}; choose from '
                        f'{_ENGAGE_ROWS}.')
  if config.ablation.rows and not config.ablation.seeds:
    raise ConfigError('config key ablation.seeds: at least one seed is needed.')


def _check_mesh(config, num_devices):
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  shape = list(config.mesh.shape)
  if len(shape) != len(config.mesh.axes):
    raise ConfigError(f'config key mesh.shape={tuple(shape)} and mesh.axes='
                      f'{tuple(config.mesh.axes)} differ in length.')
  fixed = 1
  for s in shape:
    if s != -1:
      fixed *= s
  if shape.count(-1) > 1 or num_devices % fixed:
    raise ConfigError(f'config key mesh.shape={tuple(shape)} does not fit {num_devices} devices.')
  data_size = num_devices // fixed if -1 in shape[:1] else shape[0]
  if config.train.batch_size % data_size:
    raise ConfigError(f'config key train.batch_size={config.train.batch_size} is not divisible '
                      f'by the data-parallel size {data_size} (mesh.shape={tuple(shape)}).')
  axes = tuple(config.mesh.axes)
  if 'model' in axes and 'model' in config:
    resolved = [num_devices // fixed if s == -1 else s for s in shape]
    model_size = resolved[axes.index('model')]
    # Dimensions the default axis rules shard over the `model` axis must split evenly.
    for key in ('heads', 'width', 'mlp_dim', 'vocab_pad_multiple'):
      value = config.model.get(key)
      if isinstance(value, int) and value % model_size:
        raise ConfigError(f'config key model.{key}={value} is not divisible by the size '
                          f'{model_size} of the model mesh axis (mesh.shape={tuple(shape)}).')
