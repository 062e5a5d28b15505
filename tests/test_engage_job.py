"""The Que2Engage job end to end on the tiny config: one model, the ablation as a generic sweep
(rows x seeds, aggregate, resume), the page pipeline's contract, config validation."""

import json

import numpy as np
import pytest

from mmret import jobs
from mmret.config import ConfigError, load_config
from mmret.data import prepare as prepare_lib
from mmret.jobs import sweep
from mmret.jobs import validate
from mmret.jobs.engage import data as engage_pages


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache'))


def tiny(cache, **overrides):
  return load_config('configs/engage.py:tiny', {'data.cache_dir': cache, **overrides})


def test_page_batches_contract(cache):
  config = tiny(cache)
  data = prepare_lib.prepare(config.data)
  examples = engage_pages.page_examples(data.dataset, 'train')
  assert len(examples) > 0
  # A row's negatives are impressions of its page that were not engaged.
  pages = {}
  for x, s, key in zip(data.dataset.interactions, data.dataset.splits(),
                       data.dataset.page_keys()):
    if s == 'train':
      pages.setdefault(key, []).append(x)
  index = data.dataset.item_index()
  by_number = {i: k for i, k in enumerate(dict.fromkeys(data.dataset.page_keys()))}
  for r in range(min(len(examples), 20)):
    page = pages[by_number[int(examples.page_index[r])]]
    engaged = {index[x.item_id] for x in page if x.engaged}
    assert int(examples.positive[r]) in engaged
    for n in examples.negatives[r][examples.negative_mask[r]]:
      assert int(n) not in engaged and int(n) in {index[x.item_id] for x in page}
  h = 2
  ds = engage_pages.engage_pages(examples, data.builder, data.tokenizer, batch_size=4, seed=0,
                                 num_negatives=h, query_len=8, title_len=12,
                                 trigram_buckets=64, max_trigrams=10)
  batch = next(iter(ds))
  assert batch['title_tokens'].shape == (4, 1 + h, 12)
  assert batch['image'].shape[:2] == (4, 1 + h)
  assert batch['context_present'].shape == (4, 1 + h, len(data.dataset.context_names))
  np.testing.assert_array_equal(batch['engaged'][:, 0], 1.0)
  np.testing.assert_array_equal(batch['engaged'][:, 1:], 0.0)
  assert batch['doc_mask'][:, 0].all()


def test_tiny_job_resumes_and_results_are_finite(cache, tmp_path, capsys):
  # A run stopped after step 2 (its checkpoint holds the state, BatchNorm statistics and the
  # Grain iterator) is continued by the same command with the same workdir.
  jobs.run(tiny(cache, **{'train.num_steps': 2}), tmp_path)
  results = jobs.run(tiny(cache), tmp_path)
  assert 'resumed from' in capsys.readouterr().out
  for key in ('engagement_auc', 'relevance_auc', 'recall@10', 'recall@10/exact',
              'no_text/engagement_auc', 'no_image/relevance_auc', 'no_context/engagement_auc',
              'no_context/recall@100/exact', 'loss/relevance', 'loss/engagement'):
    assert np.isfinite(results[key]), key
  for key in ('engagement_auc', 'relevance_auc'):
    assert 0.0 <= results[key] <= 1.0
  assert json.loads((tmp_path / 'results.json').read_text())['engagement_auc'] == (
      pytest.approx(results['engagement_auc']))
  assert (tmp_path / 'checkpoints' / '4').is_dir()


def test_tiny_ablation_aggregates_and_resumes(cache, tmp_path, capsys):
  config = tiny(cache, **{'sweep.rows': ('contrastive', 'multitask_dropout'),
                          'sweep.seeds': (0, 1), 'sweep.compilation_cache': False,
                          'train.num_steps': 2})
  results = jobs.run(config, tmp_path)
  for row in ('contrastive', 'multitask_dropout'):
    per_seed = [json.loads((tmp_path / row / f'seed{s}' / 'results.json').read_text())
                for s in (0, 1)]
    values = [r['engagement_auc'] for r in per_seed]
    assert results[f'{row}/engagement_auc'] == pytest.approx(np.mean(values))
    assert results[f'{row}/engagement_auc/std'] == pytest.approx(np.std(values, ddof=1))
    assert results[f'{row}/seeds'] == 2
  # The rows differ as configured (cumulative overrides).
  first = json.loads((tmp_path / 'contrastive' / 'seed0' / 'config.json').read_text())
  last = json.loads((tmp_path / 'multitask_dropout' / 'seed0' / 'config.json').read_text())
  assert not first['model']['context_token'] and last['model']['context_token']
  assert first['loss']['weights'] == {'engagement': 0.0, 'relevance': 1.0}
  assert last['loss']['weights'] == {'engagement': 0.2, 'relevance': 0.8}
  assert last['model']['modality_dropout']['text'] == 0.5 and last['loss']['mixed_negatives']
  assert 'engagement_auc' in capsys.readouterr().out  # the table is printed
  # A second call finds every results.json and trains nothing.
  again = jobs.run(config, tmp_path)
  assert again['contrastive/engagement_auc'] == results['contrastive/engagement_auc']
  assert 'done before' in capsys.readouterr().out


@pytest.mark.parametrize('key,value,match', [
    ('model.modality_dropout.text', 1.5, 'model.modality_dropout.text'),
    ('model.modality_dropout.context', -0.1, 'model.modality_dropout.context'),
    ('loss.weights.engagement', -0.2, 'loss.weights.engagement'),
    ('loss.scale', 0.0, 'loss.scale'),
    ('data.num_negatives', 0, 'loss.mixed_negatives'),
    ('sweep.rows', ('contrastive', 'bogus'), 'sweep.rows'),
    ('sweep.order', ('contrastive',), 'sweep.order'),
])
def test_validation_names_the_key(key, value, match):
  config = load_config('configs/engage.py:tiny', {key: value})
  with pytest.raises(ConfigError, match=match):
    validate(config, num_devices=8)


def test_row_config_is_cumulative():
  config = load_config('configs/engage.py:ablation')
  validate(config, num_devices=1)
  mixed = sweep.row_config(config, 'mixed_negatives', seed=2)
  assert mixed.model.context_token and mixed.loss.mixed_negatives
  assert mixed.data.num_negatives == config.data.num_negatives
  assert mixed.loss.weights.engagement == 0.0 and mixed.model.modality_dropout.text == 0.0
  assert mixed.seed == 2 and not mixed.sweep.rows
  # Cumulative, 'context' inherits contrastive's in-batch-only softmax; alone, it does not.
  assert not sweep.row_config(config, 'context', seed=0).loss.mixed_negatives
  with config.unlocked():
    config.sweep.cumulative = False
  alone = sweep.row_config(config, 'context', seed=0)
  assert alone.loss.mixed_negatives and alone.model.context_token
  assert alone.data.num_negatives == config.data.num_negatives


def test_sweep_rejects_an_override_of_a_missing_key():
  config = load_config('configs/engage.py:ablation')
  with config.unlocked():
    config.sweep.overrides.context.model.context_tokn = True
  with pytest.raises(ConfigError, match='context_tokn'):
    validate(config, num_devices=1)
