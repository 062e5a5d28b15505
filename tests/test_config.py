"""Config loading, overrides and validation: every invalid case gets an error naming the key."""

import textwrap

import ml_collections
import pytest

from mmret.config import ConfigError, apply_overrides, load_config
from mmret.jobs import validate


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / 'cfg.py'
  path.write_text(textwrap.dedent('''
      import ml_collections
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.job = 'pretrain'
        c.variant = arg or 'default'
        c.train = ml_collections.ConfigDict(dict(batch_size=8, num_steps=4, log_every=2,
                                                 checkpoint_every=2))
        c.model = ml_collections.ConfigDict(dict(
            encoder=dict(width=32, heads=4), patch_size=8))
        c.data = ml_collections.ConfigDict(dict(source='synthshop', image_size=32))
        c.loss = ml_collections.ConfigDict(dict(qic='softmax', temperature=0.05,
                                                weights=dict(qic=1.0)))
        c.eval = ml_collections.ConfigDict(dict(ks=(10, 100)))
        c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=('data', 'model')))
        return c
  '''))
  return path


def test_load_variant_and_overrides(config_file):
  c = load_config(f'{config_file}:tiny', {'train.num_steps': 7, 'loss.temperature': 1})
  assert c.variant == 'tiny'
  assert c.train.num_steps == 7
  assert c.loss.temperature == 1.0 and isinstance(c.loss.temperature, float)


def test_unknown_key_is_named_with_suggestion(config_file):
  with pytest.raises(ConfigError, match=r"unknown config key 'train.num_step'.*train.num_steps"):
    load_config(str(config_file), {'train.num_step': 3})
  with pytest.raises(ConfigError, match="unknown config key 'nope.x'"):
    load_config(str(config_file), {'nope.x': 3})


def test_locked_config_rejects_new_attribute(config_file):
  c = load_config(str(config_file))
  with pytest.raises(AttributeError):
    c.train.num_stepz = 3


def test_wrong_type_is_named(config_file):
  c = load_config(str(config_file))
  with pytest.raises(ConfigError, match="'train.batch_size'"):
    apply_overrides(c, {'train.batch_size': 'big'})


def test_missing_file():
  with pytest.raises(ConfigError, match='does not exist'):
    load_config('configs/no_such_config.py')


@pytest.mark.parametrize('override, num_devices, key', [
    ({'train.batch_size': 6}, 4, 'train.batch_size'),          # not divisible by data parallel
    ({'model.encoder.heads': 5}, 1, 'model.encoder.heads'),    # width 32 not divisible by 5
    ({'loss.qic': 'cosine'}, 1, 'loss.qic'),
    ({'loss.temperature': 0.0}, 1, 'loss.temperature'),
    ({'train.num_steps': -1}, 1, 'train.num_steps'),
    ({'eval.ks': (10, 0)}, 1, 'eval.ks'),
    ({'model.patch_size': 5}, 1, 'model.patch_size'),
    ({'data.source': '/no/such/dir'}, 1, 'data.source'),
    ({'mesh.shape': (3, 1)}, 4, 'mesh.shape'),
])
def test_validation_names_the_key(config_file, override, num_devices, key):
  c = load_config(str(config_file), override)
  with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
    validate(c, num_devices=num_devices)


@pytest.mark.parametrize('path', ['configs/pretrain.py:tiny', 'configs/recall.py:tiny',
                                  'configs/engage.py:tiny'])
def test_scann_params_are_config_keys(path):
  c = load_config(path, {'eval.scann_params.leaves_to_search': 40})
  assert c.eval.scann_params.leaves_to_search == 40 and c.eval.scann_params.reorder is None
  validate(c, num_devices=1)
  with pytest.raises(ConfigError, match=r'eval\.scann_params\.reorder=0'):
    validate(load_config(path, {'eval.scann_params.reorder': 0}), num_devices=1)


def test_valid_config_passes(config_file):
  validate(load_config(str(config_file)), num_devices=8)
  validate(load_config(str(config_file)), num_devices=1)


def test_project_configs_load_and_validate():
  for variant in ('tiny', 'default', 'base'):
    c = load_config(f'configs/pretrain.py:{variant}')
    assert isinstance(c, ml_collections.ConfigDict) and c.variant == variant
    validate(c, num_devices=1)
  with pytest.raises(ValueError, match='unknown variant'):
    load_config('configs/pretrain.py:huge')


@pytest.mark.parametrize('key, value', [('model.pooling', 'max'),
                                        ('model.retrieval_space', 'both'),
                                        ('train.rng_impl', 'philox')])
def test_unknown_choice_is_named(key, value):
  config = load_config('configs/pretrain.py:tiny')
  section, leaf = key.split('.')
  with config.unlocked():
    config[section][leaf] = value
  with pytest.raises(ConfigError, match=rf'{key}={value!r}'):
    validate(config, num_devices=1)


def test_model_axis_must_divide_the_sharded_dimensions():
  config = load_config('configs/pretrain.py:tiny')  # heads 4, width 32, mlp 64
  with config.unlocked():
    config.mesh.shape = (2, 4)
  validate(config, num_devices=8)
  with config.unlocked():
    config.mesh.shape = (1, 8)
  with pytest.raises(ConfigError, match=r'model\.heads=4 .* model mesh axis'):
    validate(config, num_devices=8)


@pytest.mark.parametrize('override, match', [
    ({'optim.lr': -1.0}, r'optim\.lr=-1\.0: must be > 0'),
    ({'optim.lr': 0.0}, r'optim\.lr=0\.0: must be > 0'),
    ({'optim.weight_decay': -0.1}, r'optim\.weight_decay=-0\.1: must be >= 0'),
    ({'optim.name': 'adam'}, r'optim\.weight_decay=0\.01 has no effect with optim\.name=.adam.'),
    ({'data.image_size': 0}, r"data\.image_size'=0: must be a positive integer"),
    ({'eval.baselines': ('bm25', 'bm52')}, r"eval\.baselines: unknown baseline 'bm52'"),
    ({'model.dropout': 1.5}, r'model\.dropout=1\.5: a probability must be in \[0, 1\]'),
    ({'model.mlm_prob': -0.1}, r'model\.mlm_prob=-0\.1: a probability must be in \[0, 1\]'),
    ({'data.title_len': 0}, r"data\.title_len'=0: must be a positive integer"),
    ({'eval.batch_size': -4}, r"eval\.batch_size'=-4: must be a positive integer"),
    ({'data.length_multiple': -4}, r'data\.length_multiple=-4: must be an integer >= 0'),
    ({'data.workers': -1}, r'data\.workers=-1: must be an integer >= 0'),
])
def test_values_that_would_be_silently_wrong_are_refused(override, match):
  config = load_config('configs/pretrain.py:tiny', override)
  with pytest.raises(ConfigError, match=match):
    validate(config, num_devices=1)
  # The project's own configs pass (adam configs set weight_decay 0).
  for spec in ('configs/engage.py:tiny', 'configs/recall.py:tiny'):
    validate(load_config(spec), num_devices=1)
