"""Two CPU processes through jax.distributed (coordinator on localhost) train exactly what one
process trains on the same global batches."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from checkpoint_util import final_params
from checkpoint_util import restore_state
from mmret.jobs import results as results_lib
from mmret.train import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(config: str, *args: str) -> list[str]:
  return [sys.executable, '-m', 'mmret.launch', '--config', config, *args]


def run_one_and_two_processes(tmp_path, command) -> list[str]:
  """Runs command(workdir) in one process (tmp_path/one), then in two processes through
  jax.distributed with a coordinator on localhost (tmp_path/two). Returns process 0's stdout.

  The one-process run goes first, so the data is prepared once and the two processes only read
  it. One CPU device per process.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  single = subprocess.run(command(tmp_path / 'one'), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(command(tmp_path / 'two') + [
      f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs[0][0]


def _results(workdir):
  return results_lib.read_results(workdir / 'results.json')  # null (non-finite) -> NaN


def test_two_processes_equal_one_process(tmp_path):
  cache = tmp_path / 'cache'
  out = run_one_and_two_processes(tmp_path, lambda workdir: _launch(
      'configs/pretrain.py:tiny', '--workdir', str(workdir), f'--config.data.cache_dir={cache}',
      f'--config.train.num_steps={STEPS}', f'--config.train.checkpoint_every={STEPS}',
      '--config.data.process_sharding=global_batch', '--config.eval.baselines=()',
      '--config.data.length_multiple=4'))  # length-bucketed batches, the same in both
  assert "mesh {'data': 2, 'model': 1}" in out  # one device in each process
  reference = restore_state(tmp_path / 'one', STEPS)
  one = final_params(tmp_path / 'one', STEPS)
  two = final_params(tmp_path / 'two', STEPS, like=reference)
  assert one.keys() == two.keys()
  for k in one:
    # Same batches and keys; only the cross-process reduction order differs.
    np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_engage_job_two_processes_equal_one_process(tmp_path):
  """The Que2Engage job across two processes: same training, and its evaluation gathers the
  vectors that the data axis splits over the processes."""
  cache = tmp_path / 'cache'
  out = run_one_and_two_processes(tmp_path, lambda workdir: _launch(
      'configs/engage.py:tiny', '--workdir', str(workdir), f'--config.data.cache_dir={cache}',
      '--config.data.process_sharding=global_batch'))
  assert "mesh {'data': 2, 'model': 1}" in out
  one, two = _results(tmp_path / 'one'), _results(tmp_path / 'two')
  np.testing.assert_allclose(two['loss/total'], one['loss/total'], rtol=1e-5)
  for key in ('engagement_auc', 'relevance_auc', 'recall@100/exact', 'no_text/engagement_auc'):
    np.testing.assert_allclose(two[key], one[key], atol=1e-3, err_msg=key)


def test_recall_job_two_processes_equal_one_process(tmp_path):
  """Stage 1 then stage 2 across two processes: row-sharded ID tables over a data axis that
  spans the processes give the metrics of one process."""
  cache = tmp_path / 'cache'
  run_one_and_two_processes(tmp_path, lambda workdir: _launch(
      'configs/recall.py:tiny', '--workdir', str(workdir),
      f'--config.stage1.data.cache_dir={cache}',
      '--config.stage1.data.process_sharding=global_batch', '--config.stage1.eval.baselines=()',
      '--config.variants=("gate_add",)'))
  one, two = _results(tmp_path / 'one'), _results(tmp_path / 'two')
  assert one.keys() == two.keys()
  for key in one:
    if 'perf/' not in key:
      np.testing.assert_allclose(two[key], one[key], atol=1e-4, err_msg=key)


@pytest.mark.parametrize('env, expected', [
    ({}, 1),
    ({'SLURM_NTASKS': '4'}, 4),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 2),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1,h2,h3'}, 4),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, 1),
])
def test_cluster_size_from_environment(env, expected):
  assert distributed.cluster_size(env) == expected


def test_single_process_initialises_nothing():
  assert distributed.initialize(env={}) is False
  with pytest.raises(ValueError, match='process_id 3'):
    distributed.initialize('localhost:1234', num_processes=2, process_id=3, env={})


_AGREE = """
import sys
import jax
from mmret.train import distributed
pid = int(sys.argv[2])
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=pid)
print(distributed.agree_max([3 + 5 * pid, 9 - 7 * pid]).tolist())
"""


def test_processes_agree_on_the_longest_rows():
  """Length buckets with per-process input: every process cuts to the maximum over processes
  (mmret/data/length_buckets.py); one process keeps its own values."""
  assert distributed.agree_max([4, 7]).tolist() == [4, 7]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, '-c', _AGREE, address, str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert [out.strip().splitlines()[-1] for out, _ in outs] == ['[8, 9]', '[8, 9]']
