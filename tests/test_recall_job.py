"""End to end: the stage-2 recall job on the tiny config (stage 1 tiny run first, into the
workdir), every variant's results, and resuming from checkpoints."""

import math

import pytest

from mmret import jobs
from mmret.config import ConfigError
from mmret.config import load_config
from mmret.jobs import validate

FUSIONS = ('id_only', 'mm_only', 'add', 'concat', 'gate_add', 'gate_concat')
KS = (10, 50, 100, 1000)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('recall_tiny')
  results = jobs.run(load_config('configs/recall.py:tiny'), workdir)
  return workdir, results


def test_every_variant_reports_recall_and_relevance_by_group(tiny_run):
  workdir, results = tiny_run
  assert (workdir / 'results.json').exists()
  assert (workdir / 'stage1' / 'checkpoints' / '4').is_dir()        # stage 1 ran there
  assert (workdir / 'stage1_vectors' / 'item_vectors.npy').exists()  # vectors cached
  for fusion in FUSIONS:
    assert (workdir / fusion / 'checkpoints' / '4').is_dir()
    for k in KS:
      for key in (f'recall@{k}', f'recall@{k}/exact', f'relevance@{k}', f'recall@{k}/head',
                  f'recall@{k}/tail', f'recall@{k}/cold', f'share@{k}/head',
                  f'share@{k}/cold'):
        value = results[f'{fusion}/{key}']
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (fusion, key, value)
    assert math.isfinite(results[f'{fusion}/loss/total'])
    # The whole tiny catalog (200 items) is inside the top 1000.
    assert results[f'{fusion}/recall@1000/exact'] == pytest.approx(1.0)
  assert 'gate_add/loss/triplet' in results and 'gate_add/train/gate_mean' in results
  groups = [results[f'groups/{g}_items'] for g in ('head', 'tail', 'cold')]
  assert sum(groups) == 200 and all(g > 0 for g in groups)
  # The summary table groups rows by variant.
  assert 'gate_add' in jobs.format_results(results)


def test_rerun_resumes_and_continues(tiny_run, capsys):
  workdir, first = tiny_run
  config = load_config('configs/recall.py:tiny', {'variants': ('gate_add',),
                                                  'train.num_steps': 6})
  results = jobs.run(config, workdir)
  out = capsys.readouterr().out
  assert 'cached vectors' in out                              # stage 1 not redone
  assert 'gate_add: resumed from' in out and 'at step 4' in out
  assert '[step 6/6]' in out and '[step 2/' not in out        # only steps 5-6 trained
  assert (workdir / 'gate_add' / 'checkpoints' / '6').is_dir()
  assert math.isfinite(results['gate_add/recall@100'])
  assert results['gate_add/loss/total'] != first['gate_add/loss/total']


def test_bad_fusion_and_negatives_are_named():
  with pytest.raises(ConfigError, match='variants'):
    validate(load_config('configs/recall.py:tiny', {'variants': ('added',)}), 8)
  with pytest.raises(ConfigError, match='id_optim.name'):
    validate(load_config('configs/recall.py:tiny', {'id_optim.name': 'sgd'}), 8)
  with pytest.raises(ConfigError, match='stage1.model.heads'):
    validate(load_config('configs/recall.py:tiny', {'stage1.model.heads': 3}), 8)


def test_negative_sampler_follows_clicks_within_its_support():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmret.jobs.recall import data as recall_data  # pylint: disable=g-import-not-at-top
  clicks = np.array([0.0, 9.0, 0.0, 3.0, 5.0])
  support = np.array([True, True, False, True, True])  # item 2 is cold: never a negative
  sampler = recall_data.NegativeSampler(clicks, smoothing=1.0, support=support)
  ids, log_q = sampler.sample(20_000, seed=0, step=3)
  q = np.array([1, 10, 0, 4, 6]) / 21
  np.testing.assert_allclose(np.bincount(ids, minlength=5) / ids.size, q, atol=0.01)
  np.testing.assert_allclose(np.exp(log_q), q[ids], rtol=1e-5)
  again, _ = sampler.sample(20_000, seed=0, step=3)  # deterministic in (seed, step): resumable
  np.testing.assert_array_equal(ids, again)
  assert not np.array_equal(ids, sampler.sample(20_000, seed=0, step=4)[0])
  # The sorted-order search gives exactly the draws of a plain search of the uniforms as drawn
  # (the negatives every run before the speed-up used), ties on CDF plateaus included.
  u = np.random.default_rng([0, 3]).random(20_000)
  plain = np.minimum(np.searchsorted(sampler._cdf, u, side='right'), 4)  # pylint: disable=protected-access
  np.testing.assert_array_equal(ids, plain.astype(np.int32))
  np.testing.assert_array_equal(log_q, sampler.log_q_all[plain])
  assert ids.dtype == np.int32 and log_q.dtype == np.float32
  # Groups: head holds >= half the clicks, cold has no impression; a partition.
  stats = recall_data.ItemStats(impressions=np.array([5.0, 20, 0, 8, 9]), clicks=clicks,
                                category=np.zeros(5, np.int32), num_categories=0)
  groups = stats.groups(0.5)
  np.testing.assert_array_equal(groups['head'], [False, True, False, False, False])
  np.testing.assert_array_equal(groups['cold'], [False, False, True, False, False])
  np.testing.assert_array_equal(groups['tail'], [True, False, False, True, True])
