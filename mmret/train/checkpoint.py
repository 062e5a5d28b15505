"""Orbax checkpoints of the train state together with the data iterator's state.

A checkpoint holds everything that determines the rest of the run: params, optimizer state,
step, RNG and the Grain iterator position. Orbax writes to a temporary directory and renames it
when complete, so a crash mid-save never leaves a checkpoint that restores wrongly.
"""

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves/restores `(TrainState, data iterator)` under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | pathlib.Path, *, every_steps: int, max_to_keep: int = 2):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=('state', 'data'))

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
    args = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self._manager.save(step, args=ocp.args.Composite(**args), force=force)
    self._manager.wait_until_finished()
    return saved

  def restore(self, abstract_state: Any, data_iterator: Any, step: int | None = None) -> Any:
    """Restores into `abstract_state`'s structure and shardings; rewinds `data_iterator`."""
    step = self.latest_step if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    args = {'state': ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored['state']

  def close(self):
    self._manager.close()
