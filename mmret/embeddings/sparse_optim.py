"""Row-sparse optimizers for ID embedding tables: the step costs what the batch touches.

`jax.grad` through `table[ids]` gives a gradient the size of the whole table, and a dense optax
update then reads and writes every row (and every optimizer slot) each step: O(table). Here the
step differentiates the *gathered rows* only, and `apply_rows` updates just those rows:

  ids [M] (duplicates allowed; padding = any id >= rows, e.g. the table's row count)
    -> unique ids [M] (static size under jit; the padding fills the tail)
    -> gradients of duplicate ids summed (segment_sum), as d(loss)/d(row) is their sum
    -> gather those rows and their optimizer slots, apply the row-wise rule, scatter them back.

Rows that are not touched stay bit-identical (no decay, no moment update: "lazy" semantics, as
TF's LazyAdam and TorchRec's fused row-wise optimizers). With the table and its slots donated to
the jitted step, XLA performs the scatters in place.

Optimizers (`RowOptimizer.name`):
  rowwise_adagrad  one accumulator per row: acc += mean_d(g^2); row -= lr * g / (sqrt(acc) + eps)
                   (the memory-light row-wise Adagrad of FBGEMM/TorchRec; slot [rows])
  adam             per-element moments m, v [rows, D] updated on touched rows only, with the
                   bias correction of the global step count (LazyAdam)
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp

from mmret.embeddings import tables

NAMES = ('rowwise_adagrad', 'adam')


@flax.struct.dataclass
class SparseTable:
  """A trainable table and its optimizer slots, all row-sharded the same way.

  table: float [N, D]. slots: dict name -> [N] or [N, D] (see RowOptimizer).
  """
  table: jax.Array
  slots: dict


@dataclasses.dataclass(frozen=True)
class RowOptimizer:
  name: str = 'rowwise_adagrad'
  learning_rate: float = 0.05
  eps: float = 1e-8
  b1: float = 0.9
  b2: float = 0.999
  initial_accumulator: float = 0.0

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f'row optimizer {self.name!r}: choose from {NAMES}.')

  def init(self, table: jax.Array, mesh, rules) -> SparseTable:
    """Slots created zero (or initial_accumulator) in the table's row sharding."""
    rows, dim = table.shape
    if self.name == 'rowwise_adagrad':
      acc = tables.zeros((rows,), tables.row_sharding(mesh, rules, 1))
      if self.initial_accumulator:
        acc = acc + self.initial_accumulator
      slots = {'accumulator': acc}
    else:
      sharding = tables.row_sharding(mesh, rules, 2)
      slots = {'m': tables.zeros((rows, dim), sharding), 'v': tables.zeros((rows, dim), sharding)}
    return SparseTable(table=table, slots=slots)

  def update_rows(self, rows: jax.Array, grads: jax.Array, slots: dict, count: jax.Array
                  ) -> tuple[jax.Array, dict]:
    """The rule on gathered rows: rows, grads [U, D]; slots gathered likewise; count >= 1."""
    lr = self.learning_rate
    if self.name == 'rowwise_adagrad':
      acc = slots['accumulator'] + jnp.mean(jnp.square(grads), axis=-1)
      new = rows - lr * grads / (jnp.sqrt(acc)[:, None] + self.eps)
      return new, {'accumulator': acc}
    m = self.b1 * slots['m'] + (1 - self.b1) * grads
    v = self.b2 * slots['v'] + (1 - self.b2) * jnp.square(grads)
    count = jnp.asarray(count, jnp.float32)
    m_hat = m / (1 - self.b1 ** count)
    v_hat = v / (1 - self.b2 ** count)
    return rows - lr * m_hat / (jnp.sqrt(v_hat) + self.eps), {'m': m, 'v': v}


def unique_rows(ids: jax.Array, grads: jax.Array, num_rows: int
                ) -> tuple[jax.Array, jax.Array]:
  """ids int [M], grads [M, D] -> (unique ids [M], summed grads [M, D]).

  Static size M under jit. Ids outside [0, num_rows) are padding: they collapse onto the
  out-of-range id `num_rows`, which also fills the unused tail, and scatters drop it.
  """
  ids = jnp.where((ids >= 0) & (ids < num_rows), ids, num_rows).astype(jnp.int32)
  uniq, inverse = jnp.unique(ids, size=ids.shape[0], fill_value=num_rows, return_inverse=True)
  summed = jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=ids.shape[0])
  return uniq, summed


def apply_rows(state: SparseTable, ids: jax.Array, grads: jax.Array, opt: RowOptimizer,
               count: jax.Array) -> SparseTable:
  """Applies `opt` to the rows `ids` [M] with per-occurrence gradients `grads` [M, D].

  count: the 1-based step number (Adam's bias correction). Cost O(M log M + M D).
  """
  num_rows = state.table.shape[0]
  uniq, summed = unique_rows(ids, grads.astype(state.table.dtype), num_rows)
  rows = tables.lookup(state.table, uniq)
  slot_rows = {k: jnp.take(v, uniq, axis=0, mode='fill', fill_value=0)
               for k, v in state.slots.items()}
  new_rows, new_slots = opt.update_rows(rows, summed, slot_rows, count)
  # mode='drop': the padding id num_rows is out of range and leaves the table untouched.
  table = state.table.at[uniq].set(new_rows.astype(state.table.dtype), mode='drop')
  slots = {k: state.slots[k].at[uniq].set(new_slots[k].astype(state.slots[k].dtype),
                                          mode='drop')
           for k in state.slots}
  return SparseTable(table=table, slots=slots)
