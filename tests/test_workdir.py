"""Workdir safety (mmret/jobs/workdir.py) and strict results.json (mmret/jobs/results.py)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from mmret.config import ConfigError, load_config
from mmret.jobs import results as results_lib
from mmret.jobs import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_second_lock_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir_lib.lock(tmp_path):
    with pytest.raises(ConfigError, match=rf'in use by pid {os.getpid()} on '):
      with workdir_lib.lock(tmp_path):
        pass
  with workdir_lib.lock(tmp_path):  # released: free again
    pass


def test_cli_refuses_a_locked_workdir_with_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  with workdir_lib.lock(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'mmret.launch', '--config',
                           'configs/pretrain.py:tiny', '--workdir', str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith('mmret: error: workdir') and 'in use by pid' in lines[-1]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'config.json').exists()   # nothing of the refused run was written


def test_resume_under_another_config_lists_the_keys(tmp_path):
  config = load_config('configs/pretrain.py:tiny')
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  # Safe changes resume.
  workdir_lib.check_resume(tmp_path, load_config(
      'configs/pretrain.py:tiny', {'train.num_steps': 9, 'eval.batch_size': 7}))
  changed = load_config('configs/pretrain.py:tiny', {'optim.lr': 0.5, 'seed': 3})
  with pytest.raises(ConfigError, match=r'2 key\(s\) differ: optim\.lr: .*-> 0\.5; seed: 0 -> 3'):
    workdir_lib.check_resume(tmp_path, changed)
  workdir_lib.check_resume(tmp_path, changed, allow_changes=True)
  # No checkpoint yet: nothing to protect.
  (tmp_path / 'checkpoints').rmdir()
  workdir_lib.check_resume(tmp_path, changed)


def test_results_are_strict_json_and_replaced_atomically(tmp_path):
  path = tmp_path / 'results.json'
  results_lib.write_results(path, {'b': math.nan, 'a': 0.5, 'c': math.inf, 'n': 3})
  text = path.read_text()
  assert json.loads(text) == {'a': 0.5, 'b': None, 'c': None, 'n': 3.0}
  assert 'NaN' not in text and 'Infinity' not in text
  back = results_lib.read_results(path)
  assert math.isnan(back['b']) and back['a'] == 0.5
  with pytest.raises(TypeError):  # a failing write leaves the previous file whole
    results_lib.write_results(path, {'a': object()})
  assert json.loads(path.read_text())['a'] == 0.5
  assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_rerun_keeps_the_train_keys_it_did_not_recompute():
  previous = {'recall@10': 0.1, 'loss/qic': 1.5, 'train/steps': 4.0,
              'gate_add/loss/total': 2.0, 'gate_add/recall@10': 0.2}
  rerun = {'recall@10': 0.1, 'train/steps': 4.0, 'gate_add/recall@10': 0.2}
  kept = results_lib.keep_train_keys(dict(rerun), previous)
  assert kept == {**rerun, 'loss/qic': 1.5, 'gate_add/loss/total': 2.0}


def test_resume_check_sees_checkpoints_one_level_down(tmp_path):
  # The recall job keeps one checkpoint directory per fusion (<workdir>/<fusion>/checkpoints).
  config = load_config('configs/recall.py:tiny')
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  workdir_lib.check_resume(tmp_path, load_config('configs/recall.py:tiny', {'seed': 1}))
  (tmp_path / 'add' / 'checkpoints').mkdir(parents=True)
  workdir_lib.check_resume(tmp_path, load_config('configs/recall.py:tiny', {
      'variants': ('gate_add',)}))  # another choice of fusions: each has its own checkpoints
  with pytest.raises(ConfigError, match=r'1 key\(s\) differ: seed: 0 -> 1\)'):
    workdir_lib.check_resume(tmp_path, load_config('configs/recall.py:tiny', {'seed': 1}))


def test_busy_workdir_is_refused_without_taking_the_lock(tmp_path):
  workdir_lib.refuse_if_busy(tmp_path)  # no lock file yet
  with workdir_lib.lock(tmp_path):
    with pytest.raises(ConfigError, match=rf'workdir {tmp_path} is in use by pid {os.getpid()} '):
      workdir_lib.refuse_if_busy(tmp_path)
  workdir_lib.refuse_if_busy(tmp_path)  # released
  with workdir_lib.lock(tmp_path):  # and the check did not keep it
    pass
