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

# config.train.rng_impl: the step key's PRNG implementation.
RNG_IMPLS = ('rbg', 'unsafe_rbg', 'threefry2x32')


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  step: int32 scalar. params: trainable parameters. opt_state: optax state.
  constants: non-trainable variable collections (e.g. the MPM codebook), passed to `apply` as is.
  rng: raw key data (uint32) of the step PRNG key, whose implementation is `rng_impl` of the
    config; each step uses `fold_in(key, step)`, so it never changes. Raw data (not a typed key)
    is a plain array for Orbax.
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


def step_key_data(seed: int, impl: str) -> jax.Array:
  """Raw data of the step key. `impl` 'rbg' compiles dropout far faster on CPU than threefry."""
  return jax.random.key_data(jax.random.key(seed, impl=impl))


def step_key(state: TrainState, impl: str) -> jax.Array:
  """The typed PRNG key of `state.step`: fold_in(root, step)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=impl), state.step)


def create_sharded_state(init_variables: Callable[[jax.Array], Any],
                         tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                         rules, step_rng: jax.Array) -> tuple[TrainState, Any]:
  """Creates the train state directly with its shardings.

  Args:
    init_variables: rng -> model variables (boxed with logical axis names), e.g.
      `lambda r: model.init(r, batch, train=False)`.
    tx: the optimizer.
    rng: key for parameter init.
    mesh, rules: device mesh and logical->mesh axis rules.
    step_rng: raw key data of the step RNG (`step_key_data`).

  Returns:
    (state, state_shardings), the latter a TrainState of NamedShardings (for jit and restore).
  """
  def init_boxed():
    params, constants = _split_variables(init_variables(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      constants=constants, rng=step_rng)

  abstract = jax.eval_shape(init_boxed)
  shardings = sharding_lib.logical_shardings(abstract, mesh, rules)
  # out_shardings places every leaf where the logical rules say, straight from the init.
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
