"""Reading a finished run's checkpoint back, for the subprocess tests."""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f'{prefix}/{k}')
  else:
    yield prefix, tree


def restore_state(workdir, step: int, like=None):
  """The train state (a dict tree) saved at `step` under workdir/checkpoints.

  like: a state tree of the same structure to restore onto this process's first device; needed
  when the checkpoint was written by another topology (e.g. two processes).
  """
  manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / 'checkpoints',
                                  item_names=('state', 'data'))
  assert manager.latest_step() == step, manager.latest_step()
  target = None
  if like is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          like)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))
  manager.close()
  state = restored['state']
  assert int(np.asarray(state['step'])) == step
  return state


def final_params(workdir, step: int, like=None) -> dict[str, np.ndarray]:
  """{'/path/to/param': array} of the params saved at `step` (see restore_state)."""
  state = restore_state(workdir, step, like)
  return {path: np.asarray(v) for path, v in _flatten(state['params'])}
