"""Preemption safety of a real training run (subprocesses of `python -m mmret.launch`).

A run killed at any moment (SIGKILL) or asked to stop (SIGTERM) and restarted with the same
command ends with parameters bit-identical to an uninterrupted run of the same length; a run that
diverges stops naming the step and metric and keeps only finite checkpoints.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from checkpoint_util import final_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  e = {**os.environ, 'JAX_PLATFORMS': 'cpu',
       # Every run compiles the same step: compile it once for the whole module.
       'JAX_COMPILATION_CACHE_DIR': str(cache),
       'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
       'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  e.pop('XLA_FLAGS', None)
  return e


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('data_cache')


def command(workdir, data_cache, *extra):
  return [sys.executable, '-m', 'mmret.launch', '--config', 'configs/pretrain.py:tiny',
          '--workdir', str(workdir), f'--config.data.cache_dir={data_cache}',
          f'--config.train.num_steps={STEPS}', '--config.train.checkpoint_every=1',
          '--config.train.log_every=1', '--config.eval.baselines=()', *extra]


def run(cmd, env):
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def interrupt_at(cmd, env, step, sig):
  """Starts cmd, sends `sig` once it has printed step `step`; returns (returncode, stderr)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    for line in proc.stdout:
      if line.startswith(f'[step {step}/'):
        proc.send_signal(sig)
        break
    proc.stdout.read()
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, proc.stderr.read()


def assert_same_params(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, env, data_cache):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  run(command(workdir, data_cache), env)
  params = final_params(workdir, STEPS)
  return params, json.loads((workdir / 'results.json').read_text())


@pytest.mark.parametrize('kill_step', sorted(random.Random(7).sample(range(2, STEPS), 3)))
def test_sigkill_then_restart_is_bit_identical(kill_step, reference, tmp_path, env, data_cache):
  cmd = command(tmp_path, data_cache)
  code, _ = interrupt_at(cmd, env, kill_step, signal.SIGKILL)
  assert code == -signal.SIGKILL
  proc = run(cmd, env)
  assert 'resumed from' in proc.stdout
  params = final_params(tmp_path, STEPS)
  assert_same_params(params, reference[0])
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['recall@100/exact'] == reference[1]['recall@100/exact']


def test_sigterm_saves_exits_and_resumes_bit_identical(reference, tmp_path, env, data_cache):
  cmd = command(tmp_path, data_cache)
  code, stderr = interrupt_at(cmd, env, 3, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  assert 'Run the same command' in stderr
  stopped_at = max(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert 3 <= stopped_at < STEPS
  proc = run(cmd, env)
  assert f'at step {stopped_at}' in proc.stdout
  params = final_params(tmp_path, STEPS)
  assert_same_params(params, reference[0])


def test_divergence_names_step_and_metric_and_keeps_finite_checkpoints(tmp_path, env,
                                                                         data_cache):
  proc = subprocess.run(command(tmp_path, data_cache, '--config.optim.lr=1e30',
                                '--config.optim.clip_norm=0.0'),
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert 'non-finite metric' in proc.stderr and 'step ' in proc.stderr
  bad_step = int(proc.stderr.split('step ')[1].split(':')[0])
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert all(s < bad_step for s in saved)


# Runs `python -m mmret.launch ARGS` with the Grain iterator's checkpoint writer patched to
# SIGKILL the process in the middle of writing checkpoint KILL_STEP: the state is (being)
# written into `<step>.orbax-checkpoint-tmp`, the data part is half a file, and nothing is
# renamed, which is what a kill during a checkpoint write leaves behind.
_KILL_DURING_WRITE = '''
import os, pathlib, runpy, signal, sys
import grain.checkpoint
kill_step = sys.argv.pop(1)
def save(self, directory, *args, **kwargs):
  directory = pathlib.Path(directory)
  if directory.parent.name == f'{kill_step}.orbax-checkpoint-tmp':
    (directory / 'process_0-of-1.json').write_text('{"half": ')
    os.kill(os.getpid(), signal.SIGKILL)
  return SAVE(self, directory, *args, **kwargs)
SAVE = grain.checkpoint.CheckpointHandler.save
grain.checkpoint.CheckpointHandler.save = save
sys.argv[0] = 'mmret.launch'
runpy.run_module('mmret.launch', run_name='__main__')
'''


def test_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one(
    reference, tmp_path, env, data_cache):
  kill_step = 5
  cmd = command(tmp_path, data_cache)
  killed = subprocess.run([sys.executable, '-c', _KILL_DURING_WRITE, str(kill_step), *cmd[3:]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  checkpoints = tmp_path / 'checkpoints'
  left = sorted(p.name for p in checkpoints.iterdir())
  assert f'{kill_step}.orbax-checkpoint-tmp' in left and str(kill_step) not in left
  proc = run(cmd, env)
  assert f'resumed from {checkpoints.absolute()} at step {kill_step - 1}' in proc.stdout
  assert not list(checkpoints.glob('*.orbax-checkpoint-tmp'))
  assert_same_params(final_params(tmp_path, STEPS), reference[0])
  results = json.loads((tmp_path / 'results.json').read_text())
  for key in ('recall@100/exact', 'recall@10', 'loss/total'):
    assert results[key] == reference[1][key], key


def test_second_job_in_a_workdir_is_refused_at_once_and_the_first_is_unharmed(
    reference, tmp_path, env, data_cache):
  # Two identical jobs in one workdir. The second is refused before it loads JAX, while the
  # first has not even finished compiling (how fast: bench/busy_workdir.py); the first then
  # ends exactly as it does alone.
  cmd = command(tmp_path, data_cache)
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stdout:  # the lock is taken before the data is read
      if line.startswith('data: '):
        break
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert first.poll() is None  # still at its first step
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'mmret: error: workdir {tmp_path} is in use by pid {first.pid} on '), lines
    assert second.stdout == ''
    first.stdout.read()
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
  assert_same_params(final_params(tmp_path, STEPS), reference[0])
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['recall@100/exact'] == reference[1]['recall@100/exact']
  assert len(list((tmp_path / 'tensorboard').glob('events.*'))) == 1  # the first job's only
