r"""Times the stage-2 recall train step as the item ID table grows (DESIGN.md §6).

The step must cost what its batch touches (B*P positives + S shared negatives), not what the
tables hold: ID rows are gathered, differentiated and scattered back row-sparsely, the frozen
per-item inputs are gathered, and negatives are sampled on the host from a precomputed CDF.
For each table size this builds the full jitted step of mmret/jobs/recall/step.py (the `add`
fusion, row-wise Adagrad on the ID tables, state donated), runs warm-up steps, then reports
the median wall time of `--steps` steps (each ended by block_until_ready), and finally the
ratio of the largest table's step time to the smallest's.

It then times the step as training feeds it (`fed`): `--steps` steps in a row, each batch made
by the host pipeline (negative sampling from the CDF, row maps, the transfer) and no sync
until the last step, once with the batches made in the loop (`fed_plain_ms`: JAX's
asynchronous dispatch alone overlaps them with the step) and once made ahead on a background
thread by mmret.data.prefetch (`fed_prefetch_ms`). Per step: total time / steps. The fed
ratio compares the prefetched fed step of the largest table with the smallest's.

  python bench/recall_step.py                              # 1e4 .. 1e7 item rows, CPU
  python bench/recall_step.py --sizes 1e4,1e6,1e8          # on an accelerator with the memory
  python bench/recall_step.py --id_optim adam --out /tmp/recall_step_adam.json

The frozen stage-1 item vectors are E = --mm_dim wide (64 here rather than the default
model's 384, so that a 10^7-row catalog fits in CPU memory next to the ID table).
"""

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mmret.config import load_config  # pylint: disable=g-import-not-at-top
from mmret.data import prefetch as prefetch_lib
from mmret.embeddings import tables
from mmret import ops
from mmret.jobs.recall import data as recall_data
from mmret.jobs.recall import step as recall_step
from mmret.towers import recall as recall_model
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib


def build(num_items: int, args, config, mesh, rules):
  """State, frozen inputs, the jitted step and a host batch maker for a catalog of num_items."""
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.fusion = args.fusion
  model = recall_model.RecallModel(model_config)
  tx = optimizer_lib.make_optimizer(config.optim, 1000)
  with config.unlocked():
    config.id_optim.name = args.id_optim
  row_opt = recall_step.row_optimizer(config.id_optim)
  state = recall_step.create_state(
      model, tx, row_opt, mesh, rules, num_query_rows=args.query_rows,
      num_item_rows=num_items, dim=config.model.dim, mm_dim=args.mm_dim,
      rng=jax.random.key(0), table_scale=0.05)
  s2 = tables.row_sharding(mesh, rules, 2)
  s1 = tables.row_sharding(mesh, rules, 1)
  # Frozen per-row inputs, created on device (random: only their size matters here).
  frozen = {
      'query_vectors': tables.create_table(jax.random.key(1), args.query_rows, args.mm_dim, s2),
      'item_vectors': tables.create_table(jax.random.key(2), num_items, args.mm_dim, s2),
      'item_stats': tables.create_table(jax.random.key(3), num_items, 3, s2, scale=1.0),
      'item_category': jax.jit(lambda: jnp.zeros((ops.padded_size(
          num_items, tables.shard_count(s1)),), jnp.int32), out_shardings=s1)(),
      # Cold rows (--cold_dropout): the last rows stand in for the hashed buckets.
      'item_cold_rows': jax.jit(lambda: num_items - 1 - jnp.arange(ops.padded_size(
          num_items, tables.shard_count(s1)), dtype=jnp.int32) % min(1024, num_items),
                                out_shardings=s1)(),
  }
  step = recall_step.make_train_step(model, tx, row_opt, config.loss, mesh, state, frozen,
                                     recall_data.BATCH_KEYS, cold_dropout=args.cold_dropout)
  # Zipf-like clicks over the catalog: the sampler's CDF is built once, O(N), outside the step.
  rs = np.random.default_rng(0)
  clicks = rs.zipf(1.3, num_items).astype(np.float64)
  sampler = recall_data.NegativeSampler(clicks, smoothing=1.0)

  def host_batch(i: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(i)
    positives = sampler.sample(args.batch * 3, seed=1, step=i)[0].reshape(args.batch, 3)
    negatives, neg_log_q = sampler.sample(args.negatives, seed=0, step=i)
    query_index = r.integers(0, args.query_rows, args.batch).astype(np.int32)
    return {'query_index': query_index, 'query_rows': query_index,
            'positives': positives, 'positive_rows': positives,
            'positive_mask': r.random((args.batch, 3)) < 0.8,
            'positive_log_q': sampler.log_q(positives),
            'negatives': negatives, 'negative_rows': negatives, 'negative_log_q': neg_log_q}

  return state, frozen, step, host_batch


def time_size(num_items: int, args, config, mesh, rules) -> dict:
  state, frozen, step, host_batch = build(num_items, args, config, mesh, rules)
  batches = [sharding_lib.to_device(host_batch(i), mesh, full=True,
                                    replicated_keys=recall_step.REPLICATED_BATCH_KEYS)
             for i in range(args.warmup + args.steps)]
  # Host side of a step (negative sampling from the CDF, ID -> row maps), timed apart.
  tic = time.perf_counter()
  for i in range(20):
    host_batch(1000 + i)
  host_ms = (time.perf_counter() - tic) / 20 * 1e3
  times = []
  with jax.set_mesh(mesh):
    for i, batch in enumerate(batches):
      tic = time.perf_counter()
      state, metrics = step(state, batch, frozen)
      jax.block_until_ready((state, metrics))
      if i >= args.warmup:
        times.append((time.perf_counter() - tic) * 1e3)
  loss = float(metrics['loss/total'])
  with jax.set_mesh(mesh):
    state, plain_ms = time_fed(state, frozen, step, host_batch, mesh, args.steps, 0)
    state, prefetch_ms = time_fed(state, frozen, step, host_batch, mesh, args.steps,
                                  args.prefetch)
  table_bytes = sum(x.nbytes for x in jax.tree.leaves(state.item_table)) + sum(
      x.nbytes for x in jax.tree.leaves(frozen))
  del state, frozen, batches
  return {'item_rows': num_items, 'median_ms': statistics.median(times),
          'p10_ms': float(np.percentile(times, 10)), 'p90_ms': float(np.percentile(times, 90)),
          'host_batch_ms': host_ms, 'fed_plain_ms': plain_ms, 'fed_prefetch_ms': prefetch_ms,
          'loss': loss, 'item_state_gib': table_bytes / 2**30}


def time_fed(state, frozen, step, host_batch, mesh, steps: int, depth: int):
  """-> (state, ms per step) of `steps` steps fed by host_batch + transfer, synced at the end.

  depth 0 makes each batch in the loop; depth > 0 makes them on a prefetch thread.
  """
  def batches():
    for i in range(2000, 2000 + steps):
      yield sharding_lib.to_device(host_batch(i), mesh, full=True,
                                   replicated_keys=recall_step.REPLICATED_BATCH_KEYS)

  jax.block_until_ready(state)
  tic = time.perf_counter()
  for batch in prefetch_lib.prefetch(batches(), depth) if depth else batches():
    state, metrics = step(state, batch, frozen)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - tic) / steps * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='1e4,1e5,1e6,1e7')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--negatives', type=int, default=10_000)
  parser.add_argument('--dim', type=int, default=64)
  parser.add_argument('--mm_dim', type=int, default=64)
  parser.add_argument('--query_rows', type=int, default=10_000)
  parser.add_argument('--fusion', default='add')
  parser.add_argument('--id_optim', default='rowwise_adagrad')
  parser.add_argument('--cold_dropout', type=float, default=0.0,
                      help='cold-start dropout rate of the step (0: off)')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--prefetch', type=int, default=2, help='prefetch depth of the fed run')
  parser.add_argument('--out', default=None, help='JSON file for the numbers')
  args = parser.parse_args()

  config = load_config('configs/recall.py')
  with config.unlocked():
    config.model.dim = args.dim
  mesh = sharding_lib.make_mesh((-1, 1), ('data', 'model'))
  rules = sharding_lib.rules_from_config(config.axis_rules)
  device = jax.devices()[0]
  print(f'device: {jax.device_count()} x {device.device_kind} ({device.platform}); '
        f'{platform.processor() or platform.machine()}; jax {jax.__version__}')
  print(f'step: fusion={args.fusion}, id_optim={args.id_optim}, batch {args.batch} pages x 3 '
        f'positives, {args.negatives} shared negatives, d={args.dim}, E={args.mm_dim}, '
        f'cold_dropout={args.cold_dropout:g}')
  rows = []
  for size in [int(float(s)) for s in args.sizes.split(',')]:
    r = time_size(size, args, config, mesh, rules)
    rows.append(r)
    print(f'  item rows {size:>12,}: {r["median_ms"]:8.2f} ms/step (p10 {r["p10_ms"]:.2f}, '
          f'p90 {r["p90_ms"]:.2f}); host batch {r["host_batch_ms"]:.2f} ms; '
          f'fed {r["fed_plain_ms"]:.2f} ms (prefetched {r["fed_prefetch_ms"]:.2f} ms); '
          f'item-side state {r["item_state_gib"]:.2f} GiB', flush=True)
  ratio = rows[-1]['median_ms'] / rows[0]['median_ms']
  print(f'ratio largest/smallest ({rows[-1]["item_rows"]:,} / {rows[0]["item_rows"]:,} rows): '
        f'{ratio:.3f}  (target <= 1.3)')
  fed_ratio = rows[-1]['fed_prefetch_ms'] / rows[0]['fed_prefetch_ms']
  print(f'fed (prefetched) ratio largest/smallest: {fed_ratio:.3f}  (target <= 1.3)')
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {'device': f'{jax.device_count()} x {device.device_kind}', 'args': vars(args),
         'rows': rows, 'ratio': ratio, 'fed_ratio': fed_ratio}, indent=2) + '\n')


if __name__ == '__main__':
  main()
