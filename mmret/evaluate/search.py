"""Top-K inner-product search over extracted item vectors: exact (the oracle) and ScaNN.

DESIGN.md §5: Recall@K retrieves the top-K items per query by nearest-neighbour search over
the query and item vectors, with ScaNN simulating the online vector engine and exact search as
the oracle. Vectors are L2-normalised upstream, so inner product is cosine similarity.

Both searchers return `(scores float32 [Q, k], ids int32 [Q, k])`, best first; ScaNN pads a
row with id -1 / score -inf when it finds fewer than k candidates, and metrics read -1 as
"nothing retrieved".
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scann

# Catalogs below this size are searched exhaustively (exact float32 scoring inside ScaNN): an
# approximate figure on a few thousand items says nothing about approximate search at scale,
# and exact scoring is cheap there. Evaluations report `search/exhaustive` = 1 for them.
EXHAUSTIVE_BELOW = 10_000
# From this size a k-means tree of round(sqrt(N)) leaves partitions the catalog; below it AH
# scores every item (~4 us per query per 1k items on 2 CPU cores), cheap enough at 50k.
_TREE_FROM = 50_000
# Leaves searched: the larger of this share of the leaves and enough leaves to expect
# _CANDIDATES_PER_NEIGHBOUR * k candidates; at N = 200k, k = 100 (447 leaves, 22 searched) this
# measured neighbour recall@100 >= 0.95 on the clustered set of bench/ann_search.py.
_LEAF_SHARE = 0.05
_CANDIDATES_PER_NEIGHBOUR = 20
# The reorder step rescores this many AH candidates per requested neighbour exactly, never
# more than a quarter of the catalog (so never the whole catalog from EXHAUSTIVE_BELOW up).
_REORDER_PER_NEIGHBOUR = 4
_MIN_REORDER = 100
_MAX_REORDER_SHARE = 4
# k-means and AH codebooks train on at most this many items (sampled by ScaNN).
_TRAINING_SAMPLE = 100_000


@functools.lru_cache(maxsize=16)
def _exact_block_fn(k: int, item_block: int):
  """jit'd (queries [B, D], items [N, D]) -> (scores [B, k], ids [B, k]), N >= item_block.

  A scan walks ceil(N / item_block) blocks of the catalog and keeps a running top-k, so only a
  [B, item_block] score matrix is ever live and the catalog is never copied or padded: the last
  block is the catalog's last item_block rows, with the rows an earlier block already scored
  masked out. Merging puts the running top-k (lower item indices) first and lax.top_k keeps
  the earlier of equal scores, so ties resolve to the lower item index exactly as in a single
  top_k over all items. Compiled once per (k, item_block) and shapes, reused across calls.
  """

  def search(queries, items):
    b, n = queries.shape[0], items.shape[0]

    def step(carry, start):
      best_scores, best_ids = carry
      first = jnp.minimum(start, n - item_block)
      block = jax.lax.dynamic_slice_in_dim(items, first, item_block)
      # HIGHEST: the oracle must not use TF32/bf16 passes that GPUs allow by default.
      scores = jnp.dot(queries, block.T, precision=jax.lax.Precision.HIGHEST)
      ids = first + jnp.arange(item_block, dtype=jnp.int32)
      scores = jnp.where(ids[None, :] >= start, scores, -jnp.inf)
      merged_scores = jnp.concatenate([best_scores, scores], axis=1)
      merged_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, scores.shape)], axis=1)
      top_scores, pos = jax.lax.top_k(merged_scores, k)
      return (top_scores, jnp.take_along_axis(merged_ids, pos, axis=1)), None

    init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.full((b, k), -1, jnp.int32))
    starts = jnp.arange(-(-n // item_block), dtype=jnp.int32) * item_block
    (scores, ids), _ = jax.lax.scan(step, init, starts)
    return scores, ids

  return jax.jit(search)


def exact_topk(queries: np.ndarray, items: np.ndarray, k: int, *, batch_size: int = 1024,
               item_batch_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k items by inner product, in query blocks x item blocks, on the default device.

  Args:
    queries: float [Q, D] query vectors.
    items: float [N, D] item vectors (the whole catalog); it is moved to the device once
      (2M x 384 float32 is 3.1 GB) and never padded or copied there.
    k: neighbours per query; capped at N.
    batch_size: queries per block. The last block is zero-padded so one compiled program
      serves every block.
    item_batch_size: items per block; besides the catalog, the device holds one
      [batch_size, item_batch_size] score matrix and the running [batch_size, k] top-k.

  Returns:
    scores float32 [Q, min(k, N)] in descending order and ids int32 [Q, min(k, N)]; equal
    scores are ordered by item index (lower first), whatever the blocking.
  """
  queries = np.asarray(queries, np.float32)
  items = np.asarray(items, np.float32)
  q, n = queries.shape[0], items.shape[0]
  k = min(k, n)
  if k <= 0 or q == 0:
    return np.zeros((q, max(k, 0)), np.float32), np.zeros((q, max(k, 0)), np.int32)
  items_dev = jnp.asarray(items)
  batch = min(batch_size, q)
  fn = _exact_block_fn(k, min(item_batch_size, n))
  all_scores, all_ids = [], []
  for start in range(0, q, batch):
    block = queries[start:start + batch]
    rows = block.shape[0]
    block = np.pad(block, ((0, batch - rows), (0, 0)))
    scores, ids = fn(jnp.asarray(block), items_dev)
    all_scores.append(np.asarray(scores)[:rows])
    all_ids.append(np.asarray(ids)[:rows])
  return np.concatenate(all_scores), np.concatenate(all_ids)


@dataclasses.dataclass(frozen=True)
class ScannParams:
  """Resolved ScaNN configuration; num_leaves == 0 means no partition tree.

  brute_force: exact float32 scoring of every item (no hashing). exhaustive: the search is
  exact search by construction (brute force, or every item reaches exact reordering), so its
  neighbour recall is 1 and says nothing about approximate search.
  """
  num_neighbors: int
  num_leaves: int
  leaves_to_search: int
  reorder: int
  training_sample_size: int
  brute_force: bool
  exhaustive: bool = False


def scann_params(num_items: int, *, num_neighbors: int, num_leaves: int | None = None,
                 leaves_to_search: int | None = None, reorder: int | None = None,
                 training_sample_size: int | None = None) -> ScannParams:
  """Chooses ScaNN parameters from the catalog size N; explicit arguments win.

  The rule, with k = min(num_neighbors, N):
    N < 10,000 (EXHAUSTIVE_BELOW), or k = N:  exhaustive (exact scoring inside ScaNN when no
                          tree or reorder is given explicitly).
    10,000 <= N < 50,000: no tree; every item is scored with anisotropic hashing (AH, 2 dims per
                          block, threshold 0.2), then the best `reorder` are rescored exactly.
    N >= 50,000:          a k-means tree of round(sqrt(N)) leaves; search the larger of 5% of
                          the leaves and enough leaves to expect 20 * k candidates; then AH
                          and exact reordering as above.
    reorder = max(k, min(max(100, 4 * k), N // 4)): from N = 10,000 up and k < N, the reorder
    pool is never the whole catalog.
    training_sample_size = min(N, 100,000) for the k-means tree and the AH codebooks.
  Training is deterministic (k-means++ initialisation, fixed seeds inside ScaNN).
  """
  k = max(1, min(num_neighbors, num_items))
  small = num_items < EXHAUSTIVE_BELOW
  brute_force = small and reorder is None and not num_leaves
  if reorder is None:
    reorder = max(_MIN_REORDER, _REORDER_PER_NEIGHBOUR * k)
    if not small:
      reorder = min(reorder, num_items // _MAX_REORDER_SHARE)
  reorder = max(k, min(reorder, num_items))
  if num_leaves is None:
    num_leaves = round(math.sqrt(num_items)) if num_items >= _TREE_FROM else 0
  num_leaves = min(num_leaves, num_items)
  if num_leaves and leaves_to_search is None:
    enough = math.ceil(_CANDIDATES_PER_NEIGHBOUR * k * num_leaves / num_items)
    leaves_to_search = max(math.ceil(_LEAF_SHARE * num_leaves), enough)
  leaves_to_search = min(leaves_to_search or 0, num_leaves)
  if training_sample_size is None:
    training_sample_size = _TRAINING_SAMPLE
  exhaustive = brute_force or (reorder >= num_items and leaves_to_search == num_leaves)
  return ScannParams(
      num_neighbors=k, num_leaves=num_leaves, leaves_to_search=leaves_to_search,
      reorder=reorder, training_sample_size=min(training_sample_size, num_items),
      brute_force=brute_force, exhaustive=exhaustive)


class ScannIndex:
  """A ScaNN dot-product searcher over a fixed catalog [N, D]."""

  def __init__(self, items: np.ndarray, params: ScannParams):
    self.items = np.ascontiguousarray(items, np.float32)
    self.params = params
    builder = scann.scann_ops_pybind.builder(self.items, params.num_neighbors, 'dot_product')
    if params.num_leaves:
      builder = builder.tree(
          num_leaves=params.num_leaves, num_leaves_to_search=params.leaves_to_search,
          training_sample_size=params.training_sample_size, random_init=False)
    if params.brute_force:
      builder = builder.score_brute_force()
    else:
      builder = builder.score_ah(
          2, anisotropic_quantization_threshold=0.2,
          training_sample_size=params.training_sample_size).reorder(params.reorder)
    self._searcher = builder.build()

  @property
  def num_items(self) -> int:
    return self.items.shape[0]

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """queries float [Q, D] -> (scores float32 [Q, k'], ids int32 [Q, k']), k' = min(k, N).

    k above the build-time num_neighbors widens the reorder pool and the leaves searched to
    what scann_params would choose for k, so its quality rule still holds. Rows with fewer
    than k' hits (too few leaves searched) are padded with id -1 and score -inf.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(k, self.num_items)
    if k <= 0 or queries.shape[0] == 0:
      return np.zeros((queries.shape[0], max(k, 0)), np.float32), np.zeros(
          (queries.shape[0], max(k, 0)), np.int32)
    reorder, leaves = self.params.reorder, self.params.leaves_to_search
    if k > self.params.num_neighbors:
      wide = scann_params(self.num_items, num_neighbors=k, num_leaves=self.params.num_leaves)
      reorder = max(reorder, wide.reorder)
      leaves = max(leaves, wide.leaves_to_search)
    ids, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k,
        pre_reorder_num_neighbors=None if self.params.brute_force else reorder,
        leaves_to_search=leaves if self.params.num_leaves else None)
    ids = np.asarray(ids).astype(np.int64)
    scores = np.asarray(scores, np.float32)
    # ScaNN returns fewer columns, or NaN-scored id-0 fillers, when it found fewer than k.
    found = ~np.isnan(scores)
    out_ids = np.full((queries.shape[0], k), -1, np.int32)
    out_scores = np.full((queries.shape[0], k), -np.inf, np.float32)
    width = min(k, ids.shape[1])
    out_ids[:, :width] = np.where(found, ids, -1)[:, :width]
    out_scores[:, :width] = np.where(found, scores, -np.inf)[:, :width]
    return out_scores, out_ids


def build_scann(items: np.ndarray, *, num_neighbors: int, num_leaves: int | None = None,
                leaves_to_search: int | None = None, reorder: int | None = None,
                training_sample_size: int | None = None) -> ScannIndex:
  """Builds a ScaNN index over items float [N, D]; parameters default by scann_params' rule."""
  params = scann_params(
      np.shape(items)[0], num_neighbors=num_neighbors, num_leaves=num_leaves,
      leaves_to_search=leaves_to_search, reorder=reorder,
      training_sample_size=training_sample_size)
  return ScannIndex(items, params)


def neighbour_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
  """Mean over queries of |approx ∩ exact| / k for ids int [Q, k]; -1 (padding) never counts."""
  approx_ids = np.asarray(approx_ids)
  exact_ids = np.asarray(exact_ids)
  q, k = exact_ids.shape
  if q == 0 or k == 0:
    return float('nan')
  # Row-offset keys turn the per-row intersection into one vectorised isin; exact padding maps
  # to `width`, an id no approx entry can have, and approx padding is masked out.
  width = int(max(approx_ids.max(initial=0), exact_ids.max(initial=0))) + 1
  rows = np.arange(q, dtype=np.int64)[:, None] * (width + 1)
  exact_keys = rows + np.where(exact_ids >= 0, exact_ids, width)
  hit = np.isin(rows + approx_ids, exact_keys) & (approx_ids >= 0)
  return float(hit.sum() / (q * k))
