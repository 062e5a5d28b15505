"""Vector extraction for evaluation: one loop for every model and tower.

    vectors = extract(encode, params, batches)     # float32 [N, D], N = valid rows

`encode(params, batch) -> [B, D]` is the job's jitted tower (a query tower, an item tower, a
recall tower reading ID tables); `batches` yields fixed-shape numpy batches whose `valid` [B]
marks the real rows (the last batch is padded so that one compiled program serves all).
Process-spanning outputs are gathered to this host (`to_host`).
"""

from collections.abc import Callable, Iterable
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from mmret.evaluate import progress


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly process-spanning) array as numpy on this host.

  An array sharded over a mesh axis that spans processes (e.g. eval vectors constrained to
  `batch` -> `data`) cannot be fetched directly: it is gathered from every process first.
  """
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def extract(encode: Callable[[Any, dict], jax.Array], params: Any,
            batches: Iterable[dict[str, np.ndarray]], *, what: str = 'rows',
            total: int | None = None) -> np.ndarray:
  """Runs `encode` over `batches` and keeps the valid rows, in order -> float32 [N, D].

  Progress lines name `what` is encoded, out of `total` rows when known (mmret/evaluate/
  progress.py)."""
  out = []
  counter = progress.Counter(what, total)
  for batch in batches:
    batch = dict(batch)
    valid = np.asarray(batch.pop('valid'))
    out.append(to_host(encode(params, batch))[valid])
    counter.add(int(valid.sum()))
  counter.done()
  return np.concatenate(out).astype(np.float32)
