"""The runner: what every training job does around its own model, data and step.

    runner = Runner(config, workdir)                 # mesh + logical axis rules from config
    tx = runner.optimizer()                          # config.optim, config.train.num_steps
    state, shardings = runner.create_state(init_variables, tx)   # sharded from the start
    trained = runner.train(state, step_fn, train_iter, next_batch, print_keys=...)
    results = runner.epilogue(results, trained)      # train keys, perf, TensorBoard eval/*

The runner owns the mesh, the optimizer, the sharded state, restoring from the last checkpoint
(state and data iterator together), the metrics logger and the step loop (mmret/train/loop.py:
log, NaN check, checkpoint, preemption) and the results epilogue. A job owns its model, its
input pipeline, its objective and step (mmret/train/step.py for the dense jobs) and its
evaluation. A job that trains several models in one run (the recall job's fusions) makes one
`train` call per model, each in its own directory.
"""

from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import math
import pathlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from mmret.train import checkpoint as checkpoint_lib
from mmret.train import loop
from mmret.train import metrics_log
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib
from mmret.train.progress import info


@dataclasses.dataclass
class Trained:
  """What `Runner.train` returns. state: after the last step; last: the last logged metrics as
  floats ({} when no step ran); seconds: time in the loop; first_step: the first step this call
  ran (> num_steps when the run was already finished); logger: still open, for the epilogue."""
  state: Any
  last: dict[str, float]
  seconds: float
  first_step: int
  num_steps: int
  batch_size: int
  logger: metrics_log.MetricsLogger

  @property
  def steps_run(self) -> int:
    return max(self.num_steps - self.first_step + 1, 0)


class Runner:
  """One job's training infrastructure; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.mesh = sharding_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    self.rules = sharding_lib.rules_from_config(config.axis_rules)

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical axis rules, for steps and for evaluation that runs sharded."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def optimizer(self, pretrained: Sequence[str] = ()) -> optax.GradientTransformation:
    """config.optim over config.train.num_steps; `pretrained`: the top-level parameter names of
    imported weights, which get optim.pretrained_lr (mmret/train/optimizer.py)."""
    return optimizer_lib.make_optimizer(self.config.optim, self.config.train.num_steps,
                                        pretrained)

  def create_state(self, init_variables: Callable[[jax.Array], Any],
                   tx: optax.GradientTransformation, seed: int | None = None
                   ) -> tuple[state_lib.TrainState, Any]:
    """The sharded TrainState: params from key(seed), step RNG from seed + 1 (config.seed by
    default). Returns (state, state shardings)."""
    seed = self.config.seed if seed is None else seed
    return state_lib.create_sharded_state(
        init_variables, tx, jax.random.key(seed), self.mesh, self.rules,
        state_lib.step_key_data(seed + 1, self.config.train.rng_impl))

  def restore(self, state: Any, data_iterator: Any, directory: pathlib.Path | None = None,
              name: str = '') -> Any:
    """The latest checkpoint in `directory` (default: the workdir), if any, restored into
    `state`'s structure and shardings; the data iterator is rewound with it."""
    # The job holds its workdir's lock: leftovers of a killed save are its own to remove.
    checkpointer = checkpoint_lib.Checkpointer(directory or self.workdir, every_steps=0,
                                               cleanup_tmp=True)
    if checkpointer.latest_step is not None:
      state = checkpointer.restore(state, data_iterator)
      who = f'{name.strip()}: ' if name.strip() else ''
      info(f'{who}resumed from {checkpointer.directory} at step {int(state.step)}')
    checkpointer.close()
    return state

  def train(self, state: Any, step_fn: Callable[[Any, Any], tuple[Any, dict]],
            train_iter: Iterator, next_batch: Callable[[int], Any], *,
            print_keys: Sequence[str] = (), workdir: pathlib.Path | None = None,
            log_prefix: str = '', after_step: Callable[[int, Any], Any] | None = None
            ) -> Trained:
    """Restores, then runs steps int(state.step) + 1 .. config.train.num_steps.

    step_fn: (state, device batch) -> (state, metrics); jitted by the job.
    train_iter: the Grain iterator whose position is checkpointed with the state.
    next_batch: step -> the device batch of that step (reads train_iter).
    workdir: where checkpoints and TensorBoard files go (default: the runner's workdir).
    after_step: optional (step, state) -> state hook of the loop (mmret/train/loop.py).
    """
    c = self.config.train
    workdir = pathlib.Path(workdir or self.workdir)
    state = self.restore(state, train_iter, workdir, name=log_prefix)
    checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=c.checkpoint_every,
                                               cleanup_tmp=True)
    logger = metrics_log.MetricsLogger(workdir, prefix=log_prefix, total_steps=c.num_steps,
                                       batch_size=c.batch_size)
    first_step = int(state.step) + 1
    with self.context():
      state, last, seconds = loop.run(
          state, step_fn, next_batch, first_step=first_step, num_steps=c.num_steps,
          log_every=c.log_every, checkpointer=checkpointer, data_iterator=train_iter,
          logger=logger, workdir=workdir, print_keys=print_keys, after_step=after_step)
    checkpointer.close()
    return Trained(state=state, last=last, seconds=seconds, first_step=first_step,
                   num_steps=c.num_steps, batch_size=c.batch_size, logger=logger)

  @staticmethod
  def epilogue(results: dict[str, float], trained: Trained) -> dict[str, float]:
    """Adds the last training metrics and throughput to `results`, writes the finite results
    to TensorBoard as eval/* and closes the logger. Returns `results`."""
    results.update({k: v for k, v in trained.last.items() if k.startswith(('loss/', 'train/'))})
    results['train/steps'] = float(trained.num_steps)
    if trained.steps_run and trained.seconds > 0:
      results['perf/train_steps_per_sec'] = trained.steps_run / trained.seconds
      results['perf/train_examples_per_sec'] = (trained.steps_run * trained.batch_size
                                                / trained.seconds)
    # NaN is a legitimate eval value (e.g. relevance of a group nothing was retrieved from);
    # TensorBoard gets the finite ones.
    trained.logger.write_scalars(trained.num_steps, {
        f'eval/{k}': v for k, v in results.items()
        if isinstance(v, (int, float)) and math.isfinite(v)})
    trained.logger.close()
    return results
