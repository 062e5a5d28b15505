"""End to end: the CLI on the tiny config, and its handling of bad flags."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
KS = (10, 50, 100, 1000)


def launch(*args, cwd=ROOT, timeout=900):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)  # one CPU device, as a user's laptop has
  return subprocess.run([sys.executable, '-m', 'mmret.launch', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('tiny_run')
  cache = tmp_path_factory.mktemp('cache')
  args = ('--config', 'configs/pretrain.py:tiny', '--workdir', str(workdir),
          f'--config.data.cache_dir={cache}')
  proc = launch(*args)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir, proc, args


def test_tiny_run_writes_every_metric(tiny_run):
  workdir, proc, _ = tiny_run
  results = json.loads((workdir / 'results.json').read_text())
  for k in KS:
    for key in (f'recall@{k}', f'recall@{k}/exact', f'relevance@{k}', f'recall@{k}/image_only',
                f'scann_neighbour_recall@{k}', f'baseline/bm25/recall@{k}',
                f'baseline/random_init/recall@{k}'):
      assert 0.0 <= results[key] <= 1.0, key
  # Recall is monotone in K, and the whole tiny catalog (200 items) is inside the top 1000.
  recalls = [results[f'recall@{k}/exact'] for k in KS]
  assert recalls == sorted(recalls) and recalls[-1] == pytest.approx(1.0)
  assert results['train/steps'] == 4
  assert all(v == v for v in results.values())  # no NaN anywhere
  # The tiny model has no imported encoder, so "as initialised" is the random init: the two
  # baselines agree exactly (the pretrained_init copy was taken before training changed the
  # params), and the trained model differs from both.
  initial = {k[len('baseline/pretrained_init/'):]: v for k, v in results.items()
             if k.startswith('baseline/pretrained_init/')}
  assert initial and initial == {k[len('baseline/random_init/'):]: v for k, v in results.items()
                                 if k.startswith('baseline/random_init/')}
  assert any(results[k] != v for k, v in initial.items())
  # The summary table is printed, with the model's row and the baselines.
  assert 'recall/exact' in proc.stdout and 'baseline/bm25' in proc.stdout
  # Checkpoints, TensorBoard events and the resolved config are in the workdir.
  assert (workdir / 'checkpoints' / '4').is_dir()
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  resolved = json.loads((workdir / 'config.json').read_text())
  assert resolved['job'] == 'pretrain' and resolved['model']['width'] == 32


def test_rerun_resumes_from_the_last_checkpoint(tiny_run):
  workdir, _, args = tiny_run
  proc = launch(*args)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'resumed from' in proc.stdout and 'at step 4' in proc.stdout
  assert '[step' not in proc.stdout  # nothing left to train


def test_unknown_config_key_is_named():
  proc = launch('--config', 'configs/pretrain.py:tiny', '--config.train.num_stepz=3',
                timeout=120)
  assert proc.returncode != 0
  assert 'num_stepz' in proc.stderr


def test_invalid_combination_is_named_before_anything_runs(tmp_path):
  proc = launch('--config', 'configs/pretrain.py:tiny', '--config.model.heads=3',
                '--workdir', str(tmp_path), timeout=120)
  assert proc.returncode != 0
  assert 'model.heads=3' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_zero_steps_evaluates_the_initial_model(tmp_path):
  # train.num_steps=0 trains nothing: the model's metrics are those of its initialisation,
  # which the pretrained_init baseline also measures (from a copy taken before training).
  from mmret import jobs  # pylint: disable=g-import-not-at-top
  from mmret.config import load_config  # pylint: disable=g-import-not-at-top
  config = load_config('configs/pretrain.py:tiny', {
      'train.num_steps': 0, 'eval.baselines': ('pretrained_init',),
      'data.cache_dir': str(tmp_path / 'cache')})
  results = jobs.run(config, tmp_path / 'run')
  assert results['train/steps'] == 0 and not any(k.startswith('loss/') for k in results)
  for k in KS:
    assert results[f'recall@{k}/exact'] == results[f'baseline/pretrained_init/recall@{k}/exact']


@pytest.mark.parametrize('args, message', [
    (('--config', 'configs/no_such.py'), "config file 'configs/no_such.py' does not exist"),
    (('--config', 'configs/pretrain.py:huge'), "unknown variant 'huge'"),
    (('--config', 'configs/pretrain.py:tiny', '--config.trian.num_steps=3'),
     "unknown config key 'trian.num_steps'. Did you mean train.num_steps?"),
    # Without --config, ml_collections parses the default config as the flag is defined.
    (('--config.trian.num_steps=3',),
     "unknown config key 'trian.num_steps'. Did you mean train.num_steps?"),
    (('--config', 'configs/recall.py', '--config.model.fusion=add'),
     "config key 'model.fusion' cannot be set: the recall job trains one model per fusion "
     """named in `variants`; set --config.variants='("add",)' instead."""),
    (('--config', 'configs/recall.py:tiny', '--config.data.source=/tmp'),
     "unknown config key 'data.source'. Did you mean stage1.data.source?"),
])
def test_cli_config_mistakes_are_one_line(args, message):
  proc = launch(*args, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('mmret: error: ') and message in lines[0], lines


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
  proc = launch('--config', 'configs/pretrain.py:tiny', '--config.train.num_steps=7',
                '--print_config', '--workdir', str(tmp_path / 'w'), timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'num_steps: 7' in proc.stdout and 'job: pretrain' in proc.stdout
  assert not (tmp_path / 'w').exists()  # nothing ran
