r"""Times the stage-1 train step of a config: setup, compile, steady step time, FLOPs, padding.

The state and step are built exactly as the job builds them (mmret/jobs/pretrain/job.py: its
model, initialiser, input pipeline and objective, the shared runner and the generic dense step),
so what is timed is what `python -m mmret.launch` runs. Reported (JSON, also printed):

  setup_seconds            data (generate/cache, tokenizer, TFDS) + model + sharded state init
  lower_seconds            tracing and lowering the first step to HLO
  compile_seconds          lower_seconds + XLA's compile: what the first step waits for
  compile_cpu_seconds      the process's CPU time over the same span: on a machine shared with
                           other jobs, the figure that does not grow with their load
  step_ms_fed              steady step time, batches from the job's own input pipeline
  step_ms_device           steady step time, one device-resident batch over and over
  examples_per_sec         batch_size / step_ms_fed
  xla_flops_per_step       XLA's FLOP count of the whole step (all devices), from the lowered
                           HLO with the layer stacks unrolled (see `model_flops`)
  xla_flops_compiled       compiled.cost_analysis()['flops']: per device, after XLA's rewrites,
                           a scanned stack's loop body counted once
  utilisation              xla_flops_per_step / devices / step time (device-resident) /
                           --peak_tflops (null without a peak)
  padding_fraction         padding share of the query + title token slots of the timed batches
                           (after length bucketing, data.length_multiple > 0)
  batch_shapes             the 'query x title' slot counts (buckets) of every batch met: the
                           first, the compile-ahead pass and the timed pass
  bucket_compile_seconds   compile of each further bucket met in a first pass of fed batches
                           (each is its own executable); compiles_during_fed: buckets first
                           met in the timed pass (their compile is inside step_ms_fed)
  pipeline_examples_per_sec  the host input pipeline alone (no device transfer, no step); with
                           data.workers = 0 it runs in the calling thread, so this is the rate
                           of one host core (`host_cores` says how many the host has); with
                           N > 0, of N Grain worker processes

  python bench/pretrain_step.py --config configs/pretrain.py:base --batch_size 8 --steps 3 \
      --out /tmp/base.json --config.data.tokenizer=train --config.data.synthshop_size=small \
      --config.model.scan=False           # the unrolled layout, for comparison
  python bench/pretrain_step.py --config configs/pretrain.py:base --batch_size 256 --steps 20 \
      --peak_tflops 989 --out /tmp/base_gpu.json   # H200 dense bf16 peak

`--config.KEY=VALUE` overrides are parsed with ast.literal_eval (a bare word stays a string).
"""

import argparse
import ast
import functools
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top
from mmret.config import load_config
from mmret.data import prepare as prepare_lib
from mmret.jobs.pretrain import data as data_lib
from mmret.jobs.pretrain import model as model_lib
from mmret.jobs.pretrain import objective
from mmret.train import runner as runner_lib
from mmret.train import state as state_lib
from mmret.train import step as step_lib


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
  """(flags, {config key: value}) from argv; every unknown flag must be --config.KEY=VALUE."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/pretrain.py:default')
  parser.add_argument('--batch_size', type=int, default=None, help='default: the config\'s')
  parser.add_argument('--steps', type=int, default=3, help='timed steps (each mode)')
  parser.add_argument('--pipeline_batches', type=int, default=10)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='peak of the device (e.g. 989 for H200 dense bf16)')
  parser.add_argument('--out', default=None, help='JSON file for the numbers')
  args, extra = parser.parse_known_args(argv)
  overrides = {}
  for item in extra:
    key, sep, text = item.partition('=')
    if not key.startswith('--config.') or not sep:
      parser.error(f'unexpected argument {item!r} (overrides are --config.KEY=VALUE)')
    try:
      overrides[key[len('--config.'):]] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key[len('--config.'):]] = text
  if args.batch_size is not None:
    overrides['train.batch_size'] = args.batch_size
  return args, overrides


def setup(config, workdir: str) -> dict[str, Any]:
  """The job's data, state and jitted step (mmret/jobs/pretrain/job.py, up to training)."""
  seconds = {}
  tic = time.perf_counter()
  data = prepare_lib.prepare(config.data)
  seconds['data'] = time.perf_counter() - tic
  runner = runner_lib.Runner(config, workdir)
  model = model_lib.build_model(config, data)
  tx = runner.optimizer()
  train = data_lib.TrainInput(config, data, runner.mesh)
  init = model_lib.Initialiser(model, train.sample, model_lib.fit_codebook(config, data))
  tic = time.perf_counter()
  state, shardings = runner.create_state(init, tx)
  state = model_lib.init_text_encoder(config, state, tx, shardings)
  jax.block_until_ready(state)
  seconds['state'] = time.perf_counter() - tic
  step_fn = step_lib.make_train_step(
      model, tx, functools.partial(objective.pretrain_objective, loss=config.loss), runner.mesh,
      shardings, rng_streams=model_lib.RNG_STREAMS, rng_impl=config.train.rng_impl)
  return dict(runner=runner, train=train, state=state, step_fn=step_fn, seconds=seconds,
              params=state_lib.param_count(state.params), model=model, tx=tx, data=data)


def flops_of(stage) -> float:
  """XLA's FLOP count of a jax `Lowered` or `Compiled`."""
  analysis = stage.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def model_flops(config, built, lowered, batch) -> float:
  """FLOPs of one step as written (all devices, before XLA's rewrites), every layer counted.

  XLA's cost analysis counts a while loop's body once, so a scanned stack (model.scan=True)
  would count one layer of each encoder call. The same step with the stacks unrolled is then
  lowered from abstract shapes only (no init, no compile: seconds) and counted instead.
  """
  if not config.model.scan:
    return flops_of(lowered)
  unrolled = ml_collections.ConfigDict(config.to_dict())
  unrolled.model.scan = False
  model = model_lib.build_model(unrolled, built['data'])
  init = model_lib.Initialiser(model, built['train'].sample)
  tx = built['tx']

  def abstract_state():
    variables = dict(nn.unbox(init(jax.random.key(0))))
    params = variables.pop('params')
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        constants=variables, rng=state_lib.step_key_data(1, config.train.rng_impl))

  step = functools.partial(
      step_lib.train_step, model=model, tx=tx, rng_streams=model_lib.RNG_STREAMS,
      objective=functools.partial(objective.pretrain_objective, loss=config.loss),
      rng_impl=config.train.rng_impl)
  return flops_of(jax.jit(step).lower(jax.eval_shape(abstract_state), batch))


def run_steps(compiled, state, batches: list) -> tuple[Any, dict, float]:
  """Runs compiled(state, batch) over `batches` (host batches read here when callables).
  Returns (state, last metrics, ms per step). Dispatch is asynchronous, as in the job's loop:
  the next batch is read while the device runs, and only the end is waited for."""
  tic = time.perf_counter()
  for batch in batches:
    state, metrics = compiled(state, batch() if callable(batch) else batch)
  jax.block_until_ready((state, metrics))
  return state, metrics, (time.perf_counter() - tic) / len(batches) * 1e3


def _shapes(batch: dict) -> tuple:
  return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))


def _token_lengths(batch: dict) -> str:
  """'query x title' slots of a batch (its length bucket)."""
  return f"{batch['query_mask'].shape[1]}x{batch['title_mask'].shape[1]}"


def padding_fraction(batches: list[dict]) -> float:
  """Share of the query and title token slots that are padding."""
  valid = total = 0
  for batch in batches:
    for key in ('query_mask', 'title_mask'):
      mask = np.asarray(batch[key])
      valid, total = valid + int(mask.sum()), total + mask.size
  return 1.0 - valid / total


def pipeline_rate(train: data_lib.TrainInput, num_batches: int, batch_size: int) -> float:
  """Examples/s of the host input pipeline alone (what the job's iterator yields)."""
  next(train.iterator)  # warm: workers and file handles
  tic = time.perf_counter()
  for _ in range(num_batches):
    next(train.iterator)
  return num_batches * batch_size / (time.perf_counter() - tic)


def measure(config, args) -> dict[str, Any]:
  """Everything the module docstring lists, for one config."""
  tic = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    built = setup(config, workdir)
    setup_seconds = time.perf_counter() - tic
    train, state = built['train'], built['state']
    with built['runner'].context():
      first = train.next_batch(1)
      tic, cpu = time.perf_counter(), time.process_time()
      lowered = built['step_fn'].lower(state, first)
      lower_seconds = time.perf_counter() - tic
      compiled = lowered.compile()
      compile_seconds = time.perf_counter() - tic
      compile_cpu_seconds = time.process_time() - cpu
      state, _, first_ms = run_steps(compiled, state, [first])  # not timed below: warm-up
      # Length buckets (data.length_multiple): one executable per batch shape. The shapes of
      # a first pass of fed batches are compiled before the timed pass (their compile times
      # reported); a shape first met in the timed pass compiles there (counted).
      by_shape = {_shapes(first): compiled}

      def executable(state, batch):
        """The compiled step of the batch's shape; compiles it if new (returns its seconds)."""
        key, tic = _shapes(batch), time.perf_counter()
        if key not in by_shape:
          by_shape[key] = built['step_fn'].lower(state, batch).compile()
          return by_shape[key], time.perf_counter() - tic
        return by_shape[key], None
      warm_batches = [train.next_batch(0) for _ in range(args.steps)]
      bucket_compile_seconds = [s for s in (executable(state, b)[1] for b in warm_batches)
                                if s is not None]
      warm = len(by_shape)

      def step(state, batch):
        return executable(state, batch)[0](state, batch)
      fed = []
      state, _, fed_ms = run_steps(step, state, [
          lambda: fed.append(train.next_batch(0)) or fed[-1] for _ in range(args.steps)])
      state, metrics, device_ms = run_steps(compiled, state, [first] * args.steps)
      flops = model_flops(config, built, lowered, first)
    batch_size = config.train.batch_size
    peak = args.peak_tflops
    return {
        'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
        'platform': jax.devices()[0].platform, 'host': platform.processor() or platform.machine(),
        'jax': jax.__version__, 'flax': flax.__version__,
        'config': args.config, 'batch_size': batch_size, 'steps': args.steps,
        'parameters': built['params'],
        'setup_seconds': setup_seconds,
        'setup_breakdown_seconds': built['seconds'],
        'lower_seconds': lower_seconds, 'compile_seconds': compile_seconds,
        'compile_cpu_seconds': compile_cpu_seconds,
        'first_step_run_ms': first_ms,
        'step_ms_fed': fed_ms, 'step_ms_device': device_ms,
        'examples_per_sec': batch_size / fed_ms * 1e3,
        'examples_per_sec_device': batch_size / device_ms * 1e3,
        'xla_flops_per_step': flops, 'xla_flops_compiled': flops_of(compiled),
        'utilisation': (flops / jax.device_count() / (device_ms / 1e3) / (peak * 1e12)
                        if peak else None),
        'padding_fraction': padding_fraction([first, *fed]),
        'length_multiple': config.data.get('length_multiple', 0),
        'batch_shapes': sorted({_token_lengths(b) for b in [first, *warm_batches, *fed]}),
        'bucket_compile_seconds': bucket_compile_seconds,
        'compiles_during_fed': len(by_shape) - warm,
        'pipeline_examples_per_sec': pipeline_rate(train, args.pipeline_batches, batch_size),
        'host_cores': os.cpu_count(), 'data_workers': config.data.get('workers', 0),
        'loss': float(metrics['loss/total']),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args, overrides = parse_args(argv)
  config = load_config(args.config, overrides)
  result = measure(config, args)
  result['overrides'] = {k: v if isinstance(v, (int, float, str, bool)) else repr(v)
                         for k, v in overrides.items()}
  if not math.isfinite(result['loss']):
    print(f'warning: the step loss is {result["loss"]}', file=sys.stderr)
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + '\n')
  return result


if __name__ == '__main__':
  main()
