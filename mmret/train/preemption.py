"""SIGTERM / SIGINT during training: finish the current step, checkpoint, exit with a message.

Schedulers (SLURM, Kubernetes, preemptible VMs) send SIGTERM some time before they kill a job.
The handler only sets a flag; the train loop checks it between steps (`should_stop`), so the
checkpoint is always of a whole step. In a multi-process job all processes must stop at the
same step, so there the flag is agreed on (an all-gather) every `sync_every` steps.
"""

import signal
import sys

import jax
import numpy as np


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is written; exits with 128 + the signal number."""


class PreemptionGuard:
  """Context manager installing the handlers; restores the previous ones on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, sync_every: int = 1):
    self.sync_every = max(int(sync_every), 1)
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
    self.signum = signum
    print(f'\nreceived {signal.Signals(signum).name}: stopping after this step and saving a '
          'checkpoint (press Ctrl-C again to abort without it).', file=sys.stderr, flush=True)

  def __enter__(self):
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False

  def should_stop(self, step: int) -> bool:
    """Whether the loop must stop after `step` (agreed by every process)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.array(self.signum is not None))
    return bool(np.any(flags))

  def exit(self, step: int, workdir) -> None:
    signum = self.signum or signal.SIGTERM
    print(f'preempted: saved a checkpoint at step {step} in {workdir}/checkpoints. Run the same '
          'command with the same --workdir to resume from it.', file=sys.stderr, flush=True)
    raise Preempted(128 + int(signum))
