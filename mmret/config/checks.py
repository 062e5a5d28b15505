"""Generic config validation, before anything compiles: the offending key is named.

Unknown keys and wrong types are already rejected by the locked ConfigDict (loading.py). This
module checks what every job's config shares (train / eval / data / mesh / optim sections,
widths and heads); each job checks its own keys and choices next to the code that owns them
(mmret/jobs/<job>/config.py), and `mmret.jobs.validate` runs both.
"""

import contextlib
import pathlib

import ml_collections

from mmret.config.loading import ConfigError

_WIDTH_KEYS = ('width', 'hidden_size', 'emb_dim')
_HEAD_KEYS = ('heads', 'num_heads')


def _walk(config: ml_collections.ConfigDict, prefix: str = ''):
  yield prefix, config
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _walk(v, f'{prefix}{k}.')


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def positive_int(config: ml_collections.ConfigDict, key: str) -> None:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f'config key {key!r}={value!r}: must be a positive integer.')


def check_choices(config: ml_collections.ConfigDict, choices: dict[str, tuple]) -> None:
  """{dotted key: allowed values}: each key present in config must hold one of its values."""
  for key, allowed in choices.items():
    value = _get(config, key)
    if value is not None and value not in allowed:
      raise ConfigError(f'config key {key}={value!r}: choose from {allowed}.')


def probability(config: ml_collections.ConfigDict, key: str, what: str = 'a probability'
                ) -> None:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
    raise ConfigError(f'config key {key}={value!r}: {what} must be in [0, 1].')


@contextlib.contextmanager
def prefixed(prefix: str):
  """Errors raised inside name their keys under `prefix` (a config embedded in another, e.g.
  the recall job's `stage1`)."""
  try:
    yield
  except ConfigError as e:
    message = str(e).replace('config key ', f'config key {prefix}')
    raise ConfigError(message.replace(f"{prefix}'", f"'{prefix}")) from e


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """The checks every job shares. `num_devices` defaults to jax.device_count(). The choices of
  the shared training keys are checked by mmret.jobs.validate, next to their owners."""
  for prefix, node in _walk(config):
    width = next((node[k] for k in _WIDTH_KEYS if k in node), None)
    heads_key = next((k for k in _HEAD_KEYS if k in node), None)
    if width is not None and heads_key is not None:
      heads = node[heads_key]
      if not isinstance(heads, int) or heads <= 0 or width % heads:
        raise ConfigError(f'config key {prefix}{heads_key}={heads!r}: the width {width} is not '
                          f'divisible by the number of heads.')

  if 'train' in config:
    for key in ('batch_size', 'log_every'):
      if key in config.train:
        positive_int(config, f'train.{key}')
    steps = config.train.get('num_steps')
    # 0 trains nothing and evaluates the model as initialised (e.g. an imported encoder).
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
      raise ConfigError(f"config key 'train.num_steps'={steps!r}: must be an integer >= 0 "
                        '(0 evaluates the initial model).')
    if 'checkpoint_every' in config.train and config.train.checkpoint_every < 0:
      raise ConfigError('config key train.checkpoint_every must be >= 0 (0 disables).')

  if 'optim' in config:
    _check_optim(config.optim)

  if 'loss' in config:
    for name, weight in config.loss.get('weights', {}).items():
      if weight < 0:
        raise ConfigError(f'config key loss.weights.{name}={weight}: weights must be >= 0.')
    if 'temperature' in config.loss and config.loss.temperature <= 0:
      raise ConfigError(f'config key loss.temperature={config.loss.temperature}: must be > 0.')

  if 'eval' in config and 'ks' in config.eval:
    if not config.eval.ks or any(not isinstance(k, int) or k <= 0 for k in config.eval.ks):
      raise ConfigError(f'config key eval.ks={config.eval.ks!r}: positive integers required.')
  for name, value in config.get('eval', {}).get('scann_params', {}).items():
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ConfigError(f'config key eval.scann_params.{name}={value!r}: a positive integer, '
                        'or None for the size rule of mmret.evaluate.search.scann_params.')

  if 'data' in config:
    source = config.data.get('source', 'synthshop')
    if source != 'synthshop' and not pathlib.Path(source).expanduser().is_dir():
      raise ConfigError(f'config key data.source={source!r}: not "synthshop" and not a '
                        'directory in the bring-your-own-data format (docs/DATA.md).')
    if 'image_size' in config.data:
      positive_int(config, 'data.image_size')
    if 'image_size' in config.data and 'model' in config:
      patch = config.model.get('patch_size')
      if patch and config.data.image_size % patch:
        raise ConfigError(f'config key model.patch_size={patch}: does not divide '
                          f'data.image_size={config.data.image_size}.')

  if 'mesh' in config and 'train' in config:
    _check_mesh(config, num_devices)
  _check_ranges(config)


# Keys that, wherever they appear, are probabilities or sizes; a value out of range would
# otherwise train silently (a negative dropout) or fail deep inside a pipeline (a length 0).
_PROBABILITY_KEYS = ('dropout', 'mlm_prob', 'mpm_prob')
_POSITIVE_INT_KEYS = ('data.query_len', 'data.title_len', 'data.vocab_size', 'eval.batch_size')


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  for prefix, node in _walk(config):
    for key in _PROBABILITY_KEYS:
      if key in node and not isinstance(node[key], ml_collections.ConfigDict):
        probability(config, prefix + key)
  for key in _POSITIVE_INT_KEYS:
    if _get(config, key) is not None:
      positive_int(config, key)


def _check_optim(optim: ml_collections.ConfigDict) -> None:
  """A learning rate that trains, and no key the chosen optimizer would ignore."""
  lr = optim.get('lr')
  if lr is not None and (isinstance(lr, bool) or not lr > 0):
    raise ConfigError(f'config key optim.lr={lr!r}: must be > 0.')
  decay = optim.get('weight_decay', 0.0)
  if decay < 0:
    raise ConfigError(f'config key optim.weight_decay={decay}: must be >= 0.')
  if decay and optim.get('name') != 'adamw':
    raise ConfigError(f'config key optim.weight_decay={decay} has no effect with '
                      f'optim.name={optim.get("name")!r}: set it to 0, or use adamw.')


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
