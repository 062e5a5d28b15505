"""Progress lines for the person running the job: printed once, by process 0."""

import jax


def info(message: str) -> None:
  """Prints `message` (flushed) on process 0 only, so a multi-process job says it once."""
  if jax.process_index() == 0:
    print(message, flush=True)
