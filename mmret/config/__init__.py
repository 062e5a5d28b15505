"""Config loading, overrides and validation."""

from mmret.config.loading import ConfigError, DEFAULT_CONFIG, apply_overrides, load_config
from mmret.config.checks import validate

__all__ = ['ConfigError', 'DEFAULT_CONFIG', 'apply_overrides', 'load_config', 'validate']
