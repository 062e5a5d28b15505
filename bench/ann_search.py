r"""ScaNN against exact search at catalog scale: neighbour recall, queries/s, build time.

The evaluator (mmret/evaluate/retrieval.py) reports Recall@K from ScaNN, whose parameters
mmret.evaluate.search.scann_params chooses from the catalog size N, and from exact search (the
oracle). This bench measures what that choice costs and buys on one data set, on the cores or
device present:

  neighbour_recall@K   mean |ScaNN top-K ∩ exact top-K| / K over the queries
  scann_qps            queries/s of ScaNN's batched search (all host cores)
  exact_qps            queries/s of mmret's blocked exact search (jax, on the default device),
                       compilation excluded (one warm-up block first)
  build_seconds        ScaNN index build (partition training, hashing, and the index)
  exhaustive           1 if scann_params made the search exact by construction (no ANN figure)

Both searchers run over all queries in --repeats alternating rounds (the same background load
for both on a shared machine); the qps figures are the median rounds, every round is kept.

  python bench/ann_search.py --items 200000 --dim 384 --k 100 --out RESULT.json
  python bench/ann_search.py --items 20000 --queries 200 --k 10     # a quick look

The vectors (--data clustered, the default) are a stated synthetic distribution: C =
--clusters centres drawn uniformly on the unit sphere S^{D-1}; an item or a query picks a
centre c uniformly and is normalise(c + s * g / sqrt(D)), g ~ N(0, I_D), s = --spread. With s =
1 the noise has the centre's norm, so a vector's cosine to its own centre is about 0.7 and to
another member of its cluster about 0.5; neighbours of a query are mostly, not only, in its
own cluster. --data uniform draws every vector uniformly on the sphere (no structure: the
hardest case for partitioning, and unlike any trained embedding).
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mmret.evaluate import search  # pylint: disable=g-import-not-at-top


def _normalise(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float,
              chunk: int = 65_536) -> np.ndarray:
  """n vectors float32 [n, D] from the module docstring's mixture around centres [C, D]."""
  d = centres.shape[1]
  out = np.empty((n, d), np.float32)
  for start in range(0, n, chunk):  # chunks keep the float64 noise off the peak memory
    m = min(chunk, n - start)
    pick = rng.integers(0, centres.shape[0], size=m)
    noise = rng.standard_normal((m, d), dtype=np.float32) * (spread / np.sqrt(d))
    out[start:start + m] = _normalise(centres[pick] + noise)
  return out


def make_data(args) -> tuple[np.ndarray, np.ndarray]:
  """-> (items float32 [N, D], queries float32 [Q, D]), unit norm, from --data and --seed."""
  rng = np.random.default_rng(args.seed)
  if args.data == 'uniform':
    return (_normalise(rng.standard_normal((args.items, args.dim), dtype=np.float32)),
            _normalise(rng.standard_normal((args.queries, args.dim), dtype=np.float32)))
  centres = _normalise(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
  return (clustered(rng, args.items, centres, args.spread),
          clustered(rng, args.queries, centres, args.spread))


def _timed(fn):
  tic = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - tic


def compare(queries: np.ndarray, items: np.ndarray, k: int, overrides: dict, batch: int,
            repeats: int) -> dict:
  """Builds ScaNN, then times `repeats` rounds of (exact pass, ScaNN pass) over all queries.

  The rounds alternate so that both searchers see the same background load on a shared
  machine; each figure is the median round. Exact search compiles on a warm-up block first.
  Returns {'exact_ids', 'scann_ids' int32 [Q, k], 'exact_qps', 'scann_qps', 'build_seconds',
  'params', 'exact_qps_rounds', 'scann_qps_rounds'}.
  """
  index, build = _timed(lambda: search.build_scann(items, num_neighbors=k, **overrides))
  search.exact_topk(queries[:batch], items, k, batch_size=batch)  # compiles
  index.search(queries[:64], k)  # warm-up: thread pool and first-touch of the index
  exact_rates, scann_rates = [], []
  for _ in range(repeats):
    (_, exact_ids), seconds = _timed(lambda: search.exact_topk(queries, items, k,
                                                               batch_size=batch))
    exact_rates.append(len(queries) / seconds)
    (_, scann_ids), seconds = _timed(lambda: index.search(queries, k))
    scann_rates.append(len(queries) / seconds)
  return {'exact_ids': exact_ids, 'scann_ids': scann_ids, 'build_seconds': build,
          'exact_qps': float(np.median(exact_rates)), 'scann_qps': float(np.median(scann_rates)),
          'exact_qps_rounds': exact_rates, 'scann_qps_rounds': scann_rates,
          'params': index.params}


def _device() -> str:
  model = ''
  if pathlib.Path('/proc/cpuinfo').is_file():
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        model = line.split(':', 1)[1].strip()
        break
  return (f'jax {jax.default_backend()}: {jax.devices()[0].device_kind}; host: '
          f'{os.cpu_count()} cores {platform.machine()} {model}'.strip())


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--items', type=int, default=200_000)
  parser.add_argument('--queries', type=int, default=2048)
  parser.add_argument('--dim', type=int, default=384)
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--data', choices=('clustered', 'uniform'), default='clustered')
  parser.add_argument('--clusters', type=int, default=1000)
  parser.add_argument('--spread', type=float, default=1.0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--exact_batch', type=int, default=256, help='queries per exact block')
  parser.add_argument('--repeats', type=int, default=3, help='alternating timing rounds')
  for name in ('num_leaves', 'leaves_to_search', 'reorder', 'training_sample_size'):
    parser.add_argument(f'--{name}', type=int, default=None,
                        help='override scann_params (default: its size rule)')
  parser.add_argument('--out', default=None, help='write the result JSON here')
  args = parser.parse_args(argv)

  tic = time.perf_counter()
  items, queries = make_data(args)
  data_seconds = time.perf_counter() - tic
  overrides = {name: getattr(args, name) for name in (
      'num_leaves', 'leaves_to_search', 'reorder', 'training_sample_size')
      if getattr(args, name) is not None}
  run = compare(queries, items, args.k, overrides, min(args.exact_batch, args.queries),
                args.repeats)
  k, params = run['exact_ids'].shape[1], run['params']
  result = {
      f'neighbour_recall@{args.k}': search.neighbour_recall(run['scann_ids'][:, :k],
                                                            run['exact_ids']),
      'scann_qps': run['scann_qps'],
      'exact_qps': run['exact_qps'],
      'speedup': run['scann_qps'] / run['exact_qps'],
      'build_seconds': run['build_seconds'],
      'exact_qps_rounds': run['exact_qps_rounds'],
      'scann_qps_rounds': run['scann_qps_rounds'],
      'exhaustive': int(params.exhaustive),
      'scann_params': dataclasses.asdict(params),
      'items': args.items, 'queries': args.queries, 'dim': args.dim, 'k': args.k,
      'data': args.data if args.data == 'uniform' else
              f'clustered: {args.clusters} centres, spread {args.spread}',
      'seed': args.seed, 'data_seconds': data_seconds,
      'device': _device(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': 'python bench/ann_search.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
  }
  print(json.dumps(result, indent=1))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
  return result


if __name__ == '__main__':
  main()
