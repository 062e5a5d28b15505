"""Progress lines of evaluation (encoding the catalog and the queries, searching), printed by
process 0: on a CPU these take minutes, which must not look like a hang.

    counter = Counter('items', total=30_000)
    counter.add(1024)        # every `every_seconds`: "[eval] encoded 12,000/30,000 items ..."
    counter.done()           # "[eval] encoded 30,000 items in 21.3s (1,408/s)"
"""

import time

import jax


def say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


EVERY_SECONDS = 10.0  # between two progress lines of one pass


class Counter:
  """Counts encoded rows; prints at most one line per `every_seconds` (EVERY_SECONDS by
  default), and one at the end."""

  def __init__(self, what: str, total: int | None = None, every_seconds: float | None = None):
    self.what, self.total = what, total
    self.every = EVERY_SECONDS if every_seconds is None else every_seconds
    self.count = 0
    self.start = self._last = time.perf_counter()

  def add(self, rows: int) -> None:
    self.count += rows
    now = time.perf_counter()
    if now - self._last < self.every:
      return
    self._last = now
    rate = self.count / max(now - self.start, 1e-9)
    of = f'/{self.total:,}' if self.total else ''
    eta = (f', ETA {(self.total - self.count) / max(rate, 1e-9):.0f}s'
           if self.total and self.total > self.count else '')
    say(f'[eval] encoded {self.count:,}{of} {self.what} ({rate:,.0f}/s{eta})')

  def done(self) -> None:
    seconds = time.perf_counter() - self.start
    say(f'[eval] encoded {self.count:,} {self.what} in {seconds:.1f}s '
        f'({self.count / max(seconds, 1e-9):,.0f}/s)')


def searched(num_queries: int, num_items: int, k: int, timings: dict[str, float]) -> None:
  """One line: what was searched, how long each search and the metrics over the rankings
  took (RetrievalEvaluator timings)."""
  parts = [f'exact {timings["exact"]:.2f}s']
  if 'scann_search' in timings:
    parts.append(f'ScaNN build {timings["scann_build"]:.2f}s + search '
                 f'{timings["scann_search"]:.2f}s')
  if 'metrics' in timings:
    parts.append(f'metrics {timings["metrics"]:.2f}s')
  say(f'[eval] searched the top {k:,} of {num_items:,} items for {num_queries:,} queries: '
      + ', '.join(parts))
