"""Train state: a plain pytree, created sharded from abstract shapes.

Flow (big_vision / flax "scale up" guide): `jax.eval_shape(init)` -> logical partition specs of
the boxed params -> mesh shardings -> `jit(init, out_shardings=...)`. No full copy of the state
ever lives on one device.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmret.train import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  step: int32 scalar. params: trainable parameters. opt_state: optax state.
  constants: non-trainable variable collections (e.g. the MPM codebook), passed to `apply` as is.
  rng: the root PRNG key; each step uses `fold_in(rng, step)`, so the key never has to change.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  constants: Any
  rng: jax.Array


def _split_variables(variables):
  variables = dict(variables)
  params = variables.pop('params')
  return params, variables


def create_sharded_state(init_variables: Callable[[jax.Array], Any],
                         tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                         rules) -> tuple[TrainState, Any]:
  """Creates the train state directly with its shardings.

  Args:
    init_variables: rng -> model variables (boxed with logical axis names), e.g.
      `lambda r: model.init(r, batch, train=False)`.
    tx: the optimizer.
    rng: key for parameter init (a separate key is split off for the step RNG).
    mesh, rules: device mesh and logical->mesh axis rules.

  Returns:
    (state, state_shardings), the latter a TrainState of NamedShardings (for jit and restore).
  """
  init_rng, step_rng = jax.random.split(rng)

  def init_boxed():
    params, constants = _split_variables(init_variables(init_rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      constants=constants, rng=step_rng)

  abstract = jax.eval_shape(init_boxed)
  shardings = sharding_lib.logical_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda: nn.unbox(init_boxed()), out_shardings=shardings)()
  return state, shardings


def replace_params(state: TrainState, tx: optax.GradientTransformation, params,
                   shardings: TrainState) -> TrainState:
  """Swaps in new params (e.g. pretrained weights) and re-initialises the optimizer state."""
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state)


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
