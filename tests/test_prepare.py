"""mmret.data.prepare: the SynthShop config a job generates, and what PreparedData derives."""

import json
import pathlib

import numpy as np
import pytest

from mmret.config import load_config
from mmret.data import prepare as prepare_lib
from mmret.data import synthshop

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'


def test_synthshop_size_override_rebuilds_the_generator_config():
  data = load_config('configs/pretrain.py:tiny').data
  with data.unlocked():
    data.synthshop_size = 'small'
  got = prepare_lib.synthshop_config(data)
  small = synthshop.default_config('small')
  assert got.size == 'small'
  assert got.catalog.num_items == small.catalog.num_items
  assert got.logs.pages_per_day == small.logs.pages_per_day


def test_fields_the_user_edited_survive_a_size_change():
  data = load_config('configs/pretrain.py:tiny').data
  with data.unlocked():
    data.synthshop.catalog.num_items = 500   # tiny's default is 200: an edit
    data.synthshop.text.omit_color_prob = 0.9
    data.synthshop_size = 'small'
    data.image_size = 48
  got = prepare_lib.synthshop_config(data)
  assert got.catalog.num_items == 500 and got.text.omit_color_prob == 0.9
  assert got.queries.num_queries == synthshop.default_config('small').queries.num_queries
  assert got.images.size == 48  # rendered at the size the model reads


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data = load_config('configs/pretrain.py:tiny').data
  with data.unlocked():
    data.source = str(FIXTURE)
    data.cache_dir = str(tmp_path_factory.mktemp('cache'))
    data.vocab_size = 200
  return prepare_lib.prepare(data)


def test_item_log_q_is_the_smoothed_share_of_train_positives(prepared):
  index = prepared.dataset.item_index()
  rows = [json.loads(line) for line in
          (FIXTURE / 'interactions.jsonl').read_text().splitlines()]
  last_day = max(r['day'] for r in rows)  # the fixture has days 0..2 and no `split` field
  counts = np.ones(len(index))
  for r in rows:
    if r['day'] != last_day and (r.get('click') or r.get('purchase')):
      counts[index[r['item_id']]] += 1
  assert counts.sum() == len(index) + 6  # six clicked-or-bought train rows in the fixture
  log_q = prepared.item_log_q()
  np.testing.assert_allclose(np.exp(log_q).sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(log_q, np.log(counts / counts.sum()), rtol=1e-6)


def test_sample_images_only_draws_items_with_images(prepared):
  images = prepared.sample_images(seed=0)
  with_image = sum(it.image is not None for it in prepared.dataset.items)
  assert images.shape == (with_image, 32, 32, 3) and images.dtype == np.uint8
  assert 'items' in prepared.summary()


def test_a_text_only_catalog_pretrains_and_evaluates(tmp_path, capsys):
  # docs/DATA.md: nothing optional is an error. Without any image the image tasks switch off
  # with one line, and the run trains and evaluates end to end.
  from mmret import jobs  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'byod'
  source.mkdir()
  items = [json.loads(line) for line in (FIXTURE / 'items.jsonl').read_text().splitlines()]
  (source / 'items.jsonl').write_text(
      ''.join(json.dumps({k: v for k, v in it.items() if k != 'image'}) + '\n' for it in items))
  for name in ('interactions.jsonl', 'queries.jsonl'):
    (source / name).write_text((FIXTURE / name).read_text())
  config = load_config('configs/pretrain.py:tiny', {
      'data.source': str(source), 'data.cache_dir': str(tmp_path / 'cache'),
      'data.vocab_size': 200, 'train.num_steps': 2, 'train.batch_size': 8,
      'train.log_every': 1, 'eval.baselines': ()})
  results = jobs.run(config, tmp_path / 'run')
  out = capsys.readouterr().out
  assert 'no item has an image: mpm, qim2 switched off' in out
  # Switched off = not computed at all (PretrainModel.tasks): no MPM/QIM2 loss is reported.
  assert 'loss/mpm' not in results and 'loss/qim2' not in results
  assert np.isfinite(results['loss/total']) and results['loss/qic'] > 0
  assert 0.0 <= results['recall@10/exact'] <= 1.0
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['loss']['weights']['mpm'] == 1.0


def test_no_eval_split_fails_before_training(tmp_path):
  # Interactions with neither `day` nor `split` are all train: the job must say so before it
  # trains, not fail in evaluation afterwards.
  from mmret import jobs  # pylint: disable=g-import-not-at-top
  from mmret.config import ConfigError  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'byod'
  source.mkdir()
  rows = [json.loads(line) for line in (FIXTURE / 'interactions.jsonl').read_text().splitlines()]
  (source / 'interactions.jsonl').write_text(''.join(
      json.dumps({k: v for k, v in r.items() if k not in ('day', 'split')}) + '\n' for r in rows))
  for name in ('items.jsonl', 'queries.jsonl'):
    (source / name).write_text((FIXTURE / name).read_text())
  (source / 'images').symlink_to(FIXTURE / 'images')
  config = load_config('configs/pretrain.py:tiny', {
      'data.source': str(source), 'data.cache_dir': str(tmp_path / 'cache'),
      'data.vocab_size': 200})
  with pytest.raises(ConfigError, match=r'data\.source=.*no eval query.*split rule'):
    jobs.run(config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'checkpoints').exists()
