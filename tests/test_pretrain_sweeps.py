"""The stage-1 sweeps of configs/pretrain.py (`seeds`, `ablation`, `small_label`): every row is
the default recipe plus exactly its own change, and a sweep reports the margin over the
initialisation (`lift/...`)."""

import pytest

from mmret.config import load_config
from mmret.jobs import sweep
from mmret.jobs.pretrain import job
from mmret.jobs.sweep import flatten


def _flat(config) -> dict:
  return {k: v for k, v in flatten(config).items()
          if not k.startswith(('sweep.', 'seed', 'log_prefix', 'eval.baselines'))}


@pytest.mark.parametrize('variant', ['seeds', 'ablation', 'small_label'])
def test_sweep_variants_validate(variant):
  config = load_config(f'configs/pretrain.py:{variant}')
  sweep.validate(config)
  assert config.sweep.rows and tuple(config.sweep.seeds) == (0, 1, 2)
  # Each seed is judged against its own untrained model.
  assert 'pretrained_init' in config.eval.baselines


def test_each_ablation_row_is_the_default_plus_its_own_change():
  config = load_config('configs/pretrain.py:ablation')
  base = _flat(sweep.row_config(config, 'default', seed=0))
  assert base == _flat(load_config('configs/pretrain.py:default'))
  expected = {
      'qic_sigmoid': {'loss.qic': 'sigmoid'},
      'cls_pooling': {'model.pooling': 'cls'},
      'no_l2': {'model.normalize': False},
      'mlm': {'loss.weights.mlm_query': 1.0, 'loss.weights.mlm_title': 1.0},
      'no_qim2': {'loss.weights.qim2': 0.0},
      'most_clicked': {'data.positives': 'most_clicked'},
      'text_only': {'data.synthshop.catalog.missing_image_share': 1.0},
      'encoder_lr_2e-4': {'optim.pretrained_lr': 2e-4},
      'old_recipe': {'optim.pretrained_lr': 0.0, 'select.every': 0, 'loss.judged_negatives': 0,
                     'loss.weights.mlm_query': 1.0, 'loss.weights.mlm_title': 1.0},
  }
  for row, change in expected.items():
    flat = _flat(sweep.row_config(config, row, seed=1))
    diff = {k: v for k, v in flat.items() if base[k] != v}
    assert diff == change, row
  assert sweep.row_config(config, 'no_mpm', seed=2).seed == 2


def test_small_label_regime_is_text_only_and_few_queries():
  config = load_config('configs/pretrain.py:small_label')
  s = config.data.synthshop
  assert s.judged.num_queries == 40 and s.catalog.missing_image_share == 1.0
  assert config.sweep.rows == ('default', 'old_recipe')
  # A plain run of the default config is not a sweep.
  assert not load_config('configs/pretrain.py:default').sweep.rows


def test_lift_is_model_minus_initialisation_for_retrieval_metrics_only():
  results = {'recall@100/exact': 0.7, 'ndcg@10': 0.9, 'loss/total': 3.0,
             'relevance@100': 0.5}
  initial = {'recall@100/exact': 0.5, 'ndcg@10': 0.95, 'loss/total': 1.0,
             'relevance@100': 0.5, 'recall@10/exact': 0.1}
  assert job.lift(results, initial) == pytest.approx(
      {'lift/recall@100/exact': 0.2, 'lift/ndcg@10': -0.05, 'lift/relevance@100': 0.0})


def test_sweep_table_scales_fractions_not_steps():
  from mmret.jobs import sweep
  results = {'a/recall@100': 0.7012, 'a/recall@100/std': 0.0121,
             'a/select/best_step': 150.0, 'a/select/best_step/std': 50.0}
  table = sweep.format_table(results, ['a', 'b'], ['recall@100', 'select/best_step'])
  row_a, row_b = table.splitlines()[2:]
  assert row_a.split() == ['a', '70.12', '±', '1.21', '150.00', '±', '50.00']
  assert row_b.split() == ['b', 'n/a', 'n/a']
