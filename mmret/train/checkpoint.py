"""Orbax checkpoints of the train state together with the data iterator's state.

A checkpoint holds everything that determines the rest of the run: params, optimizer state,
step, RNG and the Grain iterator position. Orbax writes to a temporary directory and renames it
when complete, so a crash mid-save never leaves a checkpoint that restores wrongly. What such a
crash leaves is only the temporary directory (`<step>.orbax-checkpoint-tmp`): a failed save
(a full disk) removes it at once, and a killed one is removed when the next run of the job that
owns the workdir opens the checkpoints (`cleanup_tmp=True`), so the rerun resumes from the
last complete step.
"""

import contextlib
import logging
import pathlib
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (a full disk, a lost mount): one line naming where, and
  the step a rerun resumes from."""


class Checkpointer:
  """Saves/restores `(TrainState, data iterator)` under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | pathlib.Path, *, every_steps: int, max_to_keep: int = 2,
               cleanup_tmp: bool = False):
    """cleanup_tmp: remove the temporary directories of killed saves; only the job that owns
    (has locked) the workdir may, since another's may be a save in progress."""
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=cleanup_tmp),
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
    try:
      with _quiet_orbax_errors():
        saved = self._manager.save(step, args=ocp.args.Composite(**args), force=force)
        self._manager.wait_until_finished()
    except OSError as e:
      # Orbax leaves the half-written directory behind; remove it so the workdir holds only
      # complete checkpoints, and say where, why, and what a rerun will do.
      for tmp in self.directory.glob(f'*{TMP_SUFFIX}'):
        shutil.rmtree(tmp, ignore_errors=True)
      raise CheckpointWriteError(
          f'cannot write the step-{step} checkpoint in {self.directory}: '
          f'{e.strerror or e}; free space there (or choose another --workdir) and rerun: it '
          f'resumes from step {self.latest_step or 0}.') from None
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


class _Held(logging.Filter):
  """Holds back the log records of a save, to be re-emitted only if the save succeeds."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False


@contextlib.contextmanager
def _quiet_orbax_errors():
  """Orbax logs a failed write's traceback from its writer thread at ERROR before raising it;
  the raised error already says it in one line, so the records of a failed save are dropped
  and those of a successful one passed on."""
  logger, held = logging.getLogger('absl'), _Held()
  logger.addFilter(held)
  try:
    yield
  finally:
    logger.removeFilter(held)
  for record in held.records:
    logger.handle(record)
