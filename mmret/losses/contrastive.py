"""Query–item losses of stage 1: in-batch QIC variants and the binary QIM / QIM2 loss.

DESIGN.md §1, tasks 3–5. QIC (query–item classification) scores the in-batch similarity matrix
`S = query @ item.T` [B, B]: row i is query i, column j is the item of pair j, and the positive
of row i is the diagonal entry (i, i); the other columns are in-batch negatives. A batch can hold
the same item twice (two queries clicked it); such a column is neither a positive nor a negative
for the row, which `valid [B, B]` expresses (False there; see `similarity_valid_mask`). The
diagonal always counts, whatever `valid` says there.

Variants, in the order the source found them to improve: `qic_sigmoid` < `qic_softmax` <
`qic_am_softmax`. Each can be made symmetric (`symmetric=True`): the mean of the query->item loss
of row i and the item->query loss of column i (item i against all in-batch queries).

Every function returns one value per example; `mmret/jobs/pretrain/objective.py` masks and reduces.
"""

import jax
import jax.numpy as jnp
import optax

from mmret.ops import l2_normalize


def similarity_valid_mask(item_index: jax.Array, query_index: jax.Array | None = None
                          ) -> jax.Array:
  """Candidate columns of the in-batch similarity matrix.

  Args:
    item_index: int [B] catalog index of each pair's item.
    query_index: optional int [B] index of each pair's query (-1 = unknown). Popular queries
      recur within a batch, and the other items clicked for the same query are positives too.

  Returns:
    bool [B, B]: True on the diagonal and where column j holds a different item (and, with
    query_index, a different known query) than row i; False elsewhere (neither positive nor
    negative).
  """
  item_index = jnp.asarray(item_index)
  different = item_index[:, None] != item_index[None, :]
  if query_index is not None:
    query_index = jnp.asarray(query_index)
    same_query = (query_index[:, None] == query_index[None, :]) & (query_index[:, None] >= 0)
    different &= ~same_query
  return different | jnp.eye(item_index.shape[0], dtype=bool)


def _candidates(valid: jax.Array) -> jax.Array:
  """valid [B, B] -> bool [B, B] with the diagonal (the positives) always set."""
  valid = jnp.asarray(valid, bool)
  return valid | jnp.eye(valid.shape[0], dtype=bool)


def _in_batch_softmax_ce(logits: jax.Array, valid: jax.Array, symmetric: bool,
                         extra: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """Softmax cross-entropy with the diagonal as label over valid columns (and rows). -> [B].

  extra: optional (logits [B, M], valid [B, M]) of extra negative columns per row (judged
  negatives), in the query->item direction only.
  """
  candidates = _candidates(valid)
  labels = jnp.arange(logits.shape[0])
  forward_logits, forward_where = logits, candidates
  if extra is not None:
    forward_logits = jnp.concatenate([logits, extra[0]], axis=1)
    forward_where = jnp.concatenate([candidates, jnp.asarray(extra[1], bool)], axis=1)
  forward = optax.softmax_cross_entropy_with_integer_labels(
      forward_logits, labels, axis=1, where=forward_where)
  if not symmetric:
    return forward
  # Column i: item i against every in-batch query; label i is the row of its own query.
  backward = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels, axis=0, where=candidates)
  return 0.5 * (forward + backward)


def judged_negatives_valid(row_valid: jax.Array) -> jax.Array:
  """row_valid bool [B, H] (row i's H judged negatives) -> bool [B, B * H]: row i may use only
  its own judged negatives (columns i*H .. i*H + H - 1); another query's irrelevant item may be
  relevant to row i."""
  b, h = row_valid.shape
  own = jnp.arange(b * h)[None, :] // h == jnp.arange(b)[:, None]
  return own & jnp.asarray(row_valid, bool).reshape(1, b * h)


def _logq_corrected(logits: jax.Array, log_q: jax.Array | None) -> jax.Array:
  """logits [B, B] - log_q [B] per column: the sampled-softmax correction (Yi et al. 2019).

  In-batch negatives are the batch's positives, drawn with probability q_j proportional to
  their clicks, so popular items are over-represented as negatives; subtracting log q_j from
  column j makes the loss estimate the full softmax, which keeps popularity in the scores.
  A per-column shift leaves the item->query (column) softmax unchanged.
  """
  if log_q is None:
    return logits
  return logits - jax.lax.stop_gradient(jnp.asarray(log_q, logits.dtype))[None, :]


def qic_sigmoid(query: jax.Array, item: jax.Array, valid: jax.Array, *, scale: float = 1.0,
                bias: float = 0.0, symmetric: bool = False,
                log_q: jax.Array | None = None, negatives: jax.Array | None = None,
                negatives_valid: jax.Array | None = None) -> jax.Array:
  """Sigmoid QIC: every (query, item) pair of the batch is an independent binary problem.

  Pairwise sigmoid loss as in SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image
  Pre-Training"): logit `z_ij = scale * <q_i, d_j> + bias`, label 1 on the diagonal and 0
  elsewhere, binary cross-entropy in the stable `log_sigmoid` form. Unlike SigLIP (sum over the
  batch), the per-example value is the mean over the row's valid columns. The similarity is the
  plain dot product: the cosine for L2-normalised inputs, as `QicHead` emits.

  Args:
    query: float [B, D] query vectors.
    item: float [B, D] item vectors; row i is the positive of query i.
    valid: bool [B, B] candidate columns per row (see `similarity_valid_mask`); the diagonal
      always counts.
    scale: multiplies the similarity (inverse temperature).
    bias: added to the scaled similarity (SigLIP initialises it negative, e.g. -10, to offset
      the B-1 : 1 imbalance of negatives to positives).
    symmetric: also average over each item's column (item->query) and return the mean of both.
    log_q: optional float [B] log sampling probability of each column's item (logQ correction,
      `_logq_corrected`); None = no correction.
    negatives: optional float [M, D] extra negative items (judged-irrelevant, M = B * H), used
      in the query->item direction where negatives_valid [B, M] is True
      (`judged_negatives_valid`); no logQ correction on them.

  Returns:
    float [B]: mean over valid columns of `-y log σ(z) - (1 - y) log σ(-z)`.
  """
  logits = _logq_corrected(scale * (query @ item.T) + bias, log_q)  # [B, B]
  labels = jnp.eye(logits.shape[0], dtype=logits.dtype)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  candidates = _candidates(valid)

  def mean_over(axis, values=bce, where=candidates):
    total = jnp.sum(values, axis=axis, where=where)
    return total / jnp.sum(where, axis=axis).astype(bce.dtype)  # >= 1: the diagonal

  forward = mean_over(1)
  if negatives is not None:
    # Judged negatives: label 0, no logQ (they are the query's own, not click-sampled).
    extra_logits = scale * (query @ negatives.T) + bias
    extra = optax.sigmoid_binary_cross_entropy(extra_logits, jnp.zeros_like(extra_logits))
    forward = mean_over(1, jnp.concatenate([bce, extra], axis=1),
                        jnp.concatenate([candidates, jnp.asarray(negatives_valid, bool)], 1))
  if not symmetric:
    return forward
  return 0.5 * (forward + mean_over(0))


def qic_softmax(query: jax.Array, item: jax.Array, valid: jax.Array, *, temperature: float,
                symmetric: bool = False, log_q: jax.Array | None = None,
                negatives: jax.Array | None = None,
                negatives_valid: jax.Array | None = None) -> jax.Array:
  """Softmax QIC: in-batch softmax cross-entropy with temperature τ (InfoNCE).

  The in-batch contrastive loss of CPC / CLIP (van den Oord et al. 2018, "Representation
  Learning with Contrastive Predictive Coding"; Radford et al. 2021, "Learning Transferable
  Visual Models From Natural Language Supervision"): `-log softmax(S_i / τ)_i` over the row's
  valid columns, computed with `logsumexp`. The similarity is the plain dot product: the cosine
  for L2-normalised inputs, as `QicHead` emits.

  Args:
    query: float [B, D] query vectors.
    item: float [B, D] item vectors; row i is the positive of query i.
    valid: bool [B, B] candidate columns per row (see `similarity_valid_mask`); the diagonal
      always counts.
    temperature: τ > 0; logits are `<q_i, d_j> / τ`.
    symmetric: mean of the query->item (row) and item->query (column) losses.
    log_q: optional float [B] log sampling probability of each column's item (logQ correction,
      `_logq_corrected`); None = no correction.
    negatives: optional float [M, D] extra negative items (judged-irrelevant, M = B * H), used
      in the query->item direction where negatives_valid [B, M] is True
      (`judged_negatives_valid`); no logQ correction on them.

  Returns:
    float [B]: `logsumexp_{j valid} (S_ij / τ - log q_j) - (S_ii / τ - log q_i)`.
  """
  logits = _logq_corrected((query @ item.T) / temperature, log_q)
  extra = None if negatives is None else ((query @ negatives.T) / temperature, negatives_valid)
  return _in_batch_softmax_ce(logits, valid, symmetric, extra)


def qic_am_softmax(query: jax.Array, item: jax.Array, valid: jax.Array, *, scale: float,
                   margin: float, symmetric: bool = False,
                   log_q: jax.Array | None = None, negatives: jax.Array | None = None,
                   negatives_valid: jax.Array | None = None) -> jax.Array:
  """Additive-margin softmax QIC on cosine similarities.

  AM-Softmax (Wang et al. 2018, "Additive Margin Softmax for Face Verification"): inputs are
  L2-normalised here, so `cos_ij = <q_i, d_j> / (|q_i| |d_j|)`; the positive's logit is
  `s * (cos_ii - m)` and every negative's `s * cos_ij`, then softmax cross-entropy over the row's
  valid columns. The margin makes the positive win by at least m in cosine. With `margin = 0`
  this is `qic_softmax` on normalised inputs with `temperature = 1 / scale`.

  Args:
    query: float [B, D] query vectors (any norm).
    item: float [B, D] item vectors (any norm); row i is the positive of query i.
    valid: bool [B, B] candidate columns per row (see `similarity_valid_mask`); the diagonal
      always counts.
    scale: s > 0, the logit scale (e.g. 20–30).
    margin: m >= 0, the additive cosine margin on the positive (e.g. 0.2–0.35).
    symmetric: mean of the query->item (row) and item->query (column) losses; the margin sits
      on the diagonal in both directions.
    log_q: optional float [B] log sampling probability of each column's item (logQ correction,
      `_logq_corrected`, applied after scaling); None = no correction.
    negatives: optional float [M, D] extra negative items (judged-irrelevant, M = B * H), used
      in the query->item direction where negatives_valid [B, M] is True
      (`judged_negatives_valid`); no logQ correction on them.

  Returns:
    float [B]: `-log( e^{s(cos_ii - m)} / (e^{s(cos_ii - m)} + sum_{j != i valid} e^{s cos_ij}) )`.
  """
  cos = l2_normalize(query) @ l2_normalize(item).T  # [B, B]
  cos = cos - margin * jnp.eye(cos.shape[0], dtype=cos.dtype)
  extra = None
  if negatives is not None:
    extra = (scale * (l2_normalize(query) @ l2_normalize(negatives).T), negatives_valid)
  return _in_batch_softmax_ce(_logq_corrected(scale * cos, log_q), valid, symmetric, extra)


def qim_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """QIM / QIM2 loss: binary cross-entropy of matching logits, mean over the K pairs per example.

  Query–item matching on the cross-modal [CLS] (DESIGN.md §1 tasks 4–5; the image–text matching
  task of UNITER, Chen et al. 2020, "UNITER: UNiversal Image-TExt Representation Learning"), in
  the stable `log_sigmoid` form. The model emits K = 2 pairs per query: column 0 the clicked item
  (label 1), column 1 its in-batch hard negative (label 0).

  Args:
    logits: float [B, K] matching logits.
    labels: float or bool [B, K] targets in [0, 1].
    weights: optional float [B, K] per-pair weights; None = all ones.

  Returns:
    float [B]: `sum_k w_k * BCE_k / sum_k w_k` (the plain mean over K when `weights` is None);
    0 for an example whose weights are all zero.
  """
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)  # [B, K]
  if weights is None:
    return jnp.mean(bce, axis=-1)
  weights = jnp.asarray(weights, bce.dtype)
  total = jnp.sum(bce * weights, axis=-1, where=weights != 0)
  count = jnp.sum(weights, axis=-1)
  return jnp.where(count != 0, total / jnp.where(count != 0, count, 1.0), 0.0)
