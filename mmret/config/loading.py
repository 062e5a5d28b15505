"""Config files and overrides, usable from the CLI and from a notebook alike.

A config file is a Python file with `get_config(arg: str | None) -> ml_collections.ConfigDict`
(big_vision style); `path.py:arg` selects a variant. Overrides are dotted keys. The loaded config
is locked, so an unknown key is an error naming the key, never a silently ignored typo.
"""

import contextlib
import difflib
import importlib.util
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'pretrain.py'


class ConfigError(ValueError):
  """A config key is unknown, has the wrong type, or holds an impossible value."""


def load_config(spec: str | pathlib.Path = DEFAULT_CONFIG,
                overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]`, applies `overrides` ({'train.num_steps': 10}), locks it."""
  spec = str(spec)
  path, _, arg = spec.partition(':')
  file = pathlib.Path(path)
  if not file.exists() and not file.is_absolute() and (REPO_ROOT / file).exists():
    file = REPO_ROOT / file
  if not file.is_file():
    raise ConfigError(f'config file {path!r} does not exist.')
  module_spec = importlib.util.spec_from_file_location(f'_mmret_config_{file.stem}', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:  # the config files' own "unknown variant" errors
    raise ConfigError(str(e)) from None
  config.lock()
  apply_overrides(config, overrides or {})
  return config


def _known_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_known_keys(v, prefix + k + '.'))
  return keys


# Keys that no config has on purpose, and what sets that instead: a sweep over one of them must
# not read as a typo to fix.
_SET_ELSEWHERE = {
    'model.fusion': ("the recall job trains one model per fusion named in `variants`; set "
                     """--config.variants='("add",)' instead"""),
}


def unknown_key_error(config: ml_collections.ConfigDict, key: str) -> ConfigError:
  """Names the key, and suggests keys that end like it (e.g. `stage1.data.source` for
  `data.source` in the recall config) or are spelt like it, or says what sets it instead."""
  if key in _SET_ELSEWHERE and 'variants' in config:
    return ConfigError(f'config key {key!r} cannot be set: {_SET_ELSEWHERE[key]}.')
  known = _known_keys(config)
  nested = [k for k in known if k.endswith('.' + key)]
  close = nested or difflib.get_close_matches(key, known, n=3)
  hint = f' Did you mean {", ".join(close[:3])}?' if close else ''
  return ConfigError(f'unknown config key {key!r}.{hint}')


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys in place; the value must keep the field's type (ints widen to floats)."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise unknown_key_error(config, key)
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise unknown_key_error(config, key)
    try:
      with node.ignore_type() if node[leaf] is None else contextlib.nullcontext():
        node[leaf] = value
    except TypeError as e:
      raise ConfigError(f'config key {key!r}: {e}') from e

