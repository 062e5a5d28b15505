"""How long JAX spends compiling: trace + lowering + XLA backend compile, summed from JAX's own
monitoring events (`/jax/core/compile/*_duration`).

    with CompileTimer() as timer:
      state, metrics = step_fn(state, batch)     # the first call compiles
    timer.seconds                                  # seconds of compilation inside the block

One process-wide listener is registered on first use (JAX has no public way to remove one);
timers read the running total, so nested or consecutive timers each see their own share.
"""

import threading

import jax

_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
           '/jax/core/compile/jaxpr_to_mlir_module_duration',
           '/jax/core/compile/backend_compile_duration')
_lock = threading.Lock()
_total = [0.0]
_registered = [False]


def _listener(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    with _lock:
      _total[0] += duration


def total_seconds() -> float:
  """Seconds spent compiling in this process since the first timer was created."""
  with _lock:
    if not _registered[0]:
      jax.monitoring.register_event_duration_secs_listener(_listener)
      _registered[0] = True
    return _total[0]


class CompileTimer:
  """Context manager; `seconds` is the compile time spent inside it."""

  def __init__(self):
    self.seconds = 0.0
    self._start = 0.0

  def __enter__(self) -> 'CompileTimer':
    self._start = total_seconds()
    return self

  def __exit__(self, *exc) -> None:
    self.seconds = total_seconds() - self._start
