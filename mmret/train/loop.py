"""The step loop every training job shares: step, log (with the NaN/Inf check), checkpoint,
and stop cleanly on SIGTERM/SIGINT.

    state, last, seconds = loop.run(state, step_fn, next_batch, first_step=..., ...)

The job builds its own state, jitted step and input; this module owns the order of what happens
after each step, which is what makes a killed run resumable bit-identically:
  1. metrics are fetched and checked for NaN/Inf (NonFiniteError) at log steps, and always before
     a checkpoint is written, so the last checkpoint on disk is always a finite one;
  2. a checkpoint (state + data iterator) is written every `checkpointer.every_steps`, at the
     last step, and when a stop was requested;
  3. a requested stop (agreed by every process) exits with a message saying how to resume.
Host<->device transfers happen at log and save steps only.
"""

from collections.abc import Callable, Sequence
import pathlib
import time
from typing import Any

import jax

from mmret.train import checkpoint as checkpoint_lib
from mmret.train import compile_time
from mmret.train import metrics_log
from mmret.train import preemption
from mmret.train import progress


def run(state: Any, step_fn: Callable[[Any, Any], tuple[Any, dict]],
        next_batch: Callable[[int], Any], *, first_step: int, num_steps: int, log_every: int,
        checkpointer: checkpoint_lib.Checkpointer, data_iterator: Any,
        logger: metrics_log.MetricsLogger, workdir: str | pathlib.Path,
        print_keys: Sequence[str] = (),
        after_step: Callable[[int, Any], Any] | None = None
        ) -> tuple[Any, dict[str, float], float]:
  """Runs steps first_step..num_steps (1-based, inclusive).

  Args:
    state: the train state going into step `first_step`.
    step_fn: (state, device batch) -> (new state, metrics dict of device scalars).
    next_batch: step -> the device batch of that step.
    checkpointer / data_iterator: what is saved; the iterator's position travels with the state.
    logger: prints `print_keys` and writes TensorBoard scalars at log steps.
    after_step: optional (step, state) -> state, called after each step and before its
      checkpoint (e.g. validation-based model selection, mmret/train/selection.py).
  Returns:
    (final state, the last logged metrics as floats ({} if nothing ran), seconds spent).
  """
  last: dict[str, float] = {}
  tic = time.perf_counter()
  with preemption.PreemptionGuard(sync_every=log_every) as guard:
    for step in range(first_step, num_steps + 1):
      if step == first_step:
        state, metrics = _first_step(step_fn, state, next_batch(step), step, logger)
      else:
        state, metrics = step_fn(state, next_batch(step))
      if after_step is not None:
        state = after_step(step, state)
      save = checkpointer.should_save(step) or step == num_steps
      stop = guard.should_stop(step)
      if step % log_every == 0 or save or stop:
        last = logger.log(step, metrics, print_keys=print_keys)
      if save or stop:
        checkpointer.save(step, state, data_iterator, force=True)
      if stop:
        checkpointer.close()
        logger.close()
        guard.exit(step, workdir)
  return state, last, time.perf_counter() - tic


def _first_step(step_fn, state, batch, step: int, logger: metrics_log.MetricsLogger):
  """The first step of a run compiles the step: say so, and how long it took, and restart the
  logger's clock so that steps/s and the ETA measure the steps that follow."""
  progress.info(f'{logger.prefix}step {step}: compiling the train step ...')
  tic = time.perf_counter()
  with compile_time.CompileTimer() as timer:
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
  progress.info(f'{logger.prefix}step {step}: compiled in {timer.seconds:.1f}s '
                f'(first step {time.perf_counter() - tic:.1f}s in all)')
  logger.reset_clock(step)
  return state, metrics
