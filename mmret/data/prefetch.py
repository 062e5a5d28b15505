"""Host batches made ahead of use on a background thread, so that host work overlaps the step.

  for batch in prefetch(map(make_batch, range(first, last + 1)), depth=2):
    state, metrics = step(state, batch)     # make_batch(i + 1), (i + 2) run meanwhile

The items come out in the order of the source iterator and are the source's own objects, so
a loop fed through prefetch sees exactly the batches of the plain loop (tests/test_prefetch.py).
One thread is enough to hide host work that is shorter than the step; numpy's larger kernels
release the GIL, and a jitted step runs outside it. Work longer than the step stays the
bound: then the host work itself must get cheaper.

The source is read ahead by up to depth + 1 items: a Grain iterator checkpointed with the
state would then be saved ahead of the step, so resumable jobs must not wrap it in this.
"""

from collections.abc import Iterable, Iterator
import queue
import threading
from typing import TypeVar

T = TypeVar('T')

_END = object()
_POLL_SECONDS = 0.1  # how often a blocked producer checks that the consumer is still there


class _Raised:
  """An exception of the producer, re-raised in the consumer at the item it happened at."""

  def __init__(self, error: BaseException):
    self.error = error


def _produce(source: Iterable, out: queue.Queue, stop: threading.Event) -> None:
  def put(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  try:
    for item in source:
      if not put(item):
        return
  except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
    put(_Raised(e))
    return
  put(_END)


def prefetch(source: Iterable[T], depth: int = 2) -> Iterator[T]:
  """Yields source's items in order, each made up to `depth` items before it is consumed.

  Args:
    source: any iterable; it is iterated on one background (daemon) thread.
    depth: items held ready (>= 1).

  An exception raised by the source is re-raised here, after the items before it. Closing
  the generator (or leaving the loop and dropping it) stops the thread at its next item.
  """
  if depth < 1:
    raise ValueError(f'prefetch depth must be >= 1, got {depth}.')
  out: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  thread = threading.Thread(target=_produce, args=(source, out, stop), daemon=True,
                            name='mmret-prefetch')
  thread.start()
  try:
    while True:
      item = out.get()
      if item is _END:
        return
      if isinstance(item, _Raised):
        raise item.error
      yield item
  finally:
    stop.set()
