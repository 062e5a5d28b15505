"""The one train step of the dense jobs (stage-1 pre-training, Que2Engage).

    step_fn = make_train_step(model, tx, objective, mesh, state_shardings,
                              rng_streams=('dropout', 'masking'), mutable=())

`train_step` is pure and module-level: the step key is `fold_in(state.rng, state.step)`, split
into one key per named RNG stream of the model; variable collections the model updates while
training (`mutable`, e.g. BatchNorm's `batch_stats`) are written back into `state.constants`,
so they are checkpointed with the params. The job supplies only its model, its objective
(`objective(out, batch) -> (scalar, metrics)`) and the names of its streams and collections.
The stage-2 recall job, whose ID tables are updated row-sparsely, has its own step
(mmret/jobs/recall/step.py) and shares everything around it (mmret/train/runner.py).
"""

from collections.abc import Callable, Sequence
import functools

import flax.linen as nn
import jax
import optax

from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib

Objective = Callable[[dict, dict], tuple[jax.Array, dict[str, jax.Array]]]


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, objective: Objective,
               rng_streams: Sequence[str], mutable: Sequence[str] = (),
               rng_impl: str = 'rbg') -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimisation step. Pure: the RNG is `fold_in(state.rng, state.step)`.

  Args:
    state: the train state (params, optimizer state, constants, step, rng).
    batch: the job's batch of arrays, sharded over `batch`.
    model: applied as `model.apply(variables, batch, train=True, rngs=..., mutable=...)`.
    objective: (model outputs, batch) -> (scalar loss, metrics dict of scalars).
    rng_streams: the model's RNG stream names, one key each (in this order) from the step key.
    mutable: variable collections the model updates in training (written into constants).
  Returns:
    (new state, metrics dict of scalars, still on device).
  """
  keys = jax.random.split(state_lib.step_key(state, rng_impl), len(rng_streams))
  rngs = dict(zip(rng_streams, keys))

  def loss_fn(params):
    variables = {'params': params, **state.constants}
    if mutable:
      out, mutated = model.apply(variables, batch, train=True, rngs=rngs, mutable=list(mutable))
    else:
      out, mutated = model.apply(variables, batch, train=True, rngs=rngs), {}
    total, metrics = objective(out, batch)
    return total, (metrics, mutated)

  (_, (metrics, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['train/grad_norm'] = optax.tree.norm(grads)
  metrics['train/param_norm'] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       constants={**state.constants, **mutated}), metrics


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, objective: Objective,
                    mesh, state_shardings, *, rng_streams: Sequence[str],
                    mutable: Sequence[str] = (), rng_impl: str = 'rbg'):
  """jit(train_step) once, with explicit in/out shardings and the state donated."""
  step = functools.partial(train_step, model=model, tx=tx, objective=objective,
                           rng_streams=tuple(rng_streams), mutable=tuple(mutable),
                           rng_impl=rng_impl)
  return jax.jit(step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))
