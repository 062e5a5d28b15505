"""Per-token pre-training losses of stage 1: masked language and masked patch modelling.

DESIGN.md §1, tasks 1 and 2. Both losses score a fixed number P of prediction slots per
example (the masked positions the model gathered, padded to P) and weight each slot with
`weights [B, P]` (1 for a real masked position, 0 for padding). Each returns one value per
example; the objective in `mmret/jobs/pretrain/objective.py` masks, reduces and weights them.

Normalisation (both losses): `sum_p w_p * loss_p / max(sum_p w_p, 1)`. With 0/1 weights this is
the mean over the example's masked slots, and an example with no masked slot gives exactly 0
(never NaN). Slots with weight 0 are excluded with `where=`, so whatever they hold (a padding
label outside the vocabulary, a -inf log-probability) cannot reach the value or its gradient.
"""

import jax
import jax.numpy as jnp
import optax


def _weighted_slot_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """values, weights [..., P] -> [...]: sum(w * v) / max(sum(w), 1), zero-weight slots excluded."""
  weights = jnp.asarray(weights, values.dtype)
  total = jnp.sum(values * weights, axis=-1, where=weights != 0)
  return total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


def masked_lm(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Masked language modelling loss, per example.

  The BERT MLM objective (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
  Transformers for Language Understanding"): softmax cross-entropy of the original token at each
  masked position, here averaged over the example's masked positions. Used separately for the
  query (on the query tower) and the title (on the item tower), DESIGN.md §1 task 1.

  Args:
    logits: float [B, P, V] vocabulary logits at the P prediction slots.
    labels: int [B, P] original token ids, in [0, V) wherever `weights` is non-zero (padding
      slots may hold anything).
    weights: float or bool [B, P], 1 for a masked position, 0 for a padding slot.

  Returns:
    float [B]: `sum_p w_p * CE_p / max(sum_p w_p, 1)` (see the module docstring); 0 for an
    example without masked positions.
  """
  # Padding slots may carry out-of-range labels; clamp them so the gather stays finite (they are
  # excluded below anyway).
  safe_labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # [B, P]
  return _weighted_slot_mean(ce, weights)


def masked_patch_kl(log_probs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Masked patch modelling loss, per example: KL(targets || predicted) per masked patch.

  FashionBERT-style masked patch modelling (Gao et al. 2020, "FashionBERT: Text and Image
  Matching with Adaptive Loss for Cross-modal Retrieval"), with a KL-divergence loss between the
  patch's target class distribution and the predicted one (DESIGN.md §1 task 2). Per patch:
  `sum_c t_c (log t_c - log p_c)`, with `0 * log 0 = 0`, so targets with exact zeros (one-hot or
  sparse soft labels) are fine. Targets are data (from the frozen MPM codebook): the derivative
  of `t log t` diverges at `t = 0`, so do not differentiate with respect to them.

  Args:
    log_probs: float [B, P, C] predicted log-probabilities (log-softmax output) per slot.
    targets: float [B, P, C] target distributions (non-negative, each summing to 1).
    weights: float or bool [B, P], 1 for a masked patch, 0 for a padding slot.

  Returns:
    float [B]: `sum_p w_p * KL_p / max(sum_p w_p, 1)`; 0 for an example without masked patches.
  """
  kl = optax.kl_divergence(log_probs, targets)  # [B, P]
  return _weighted_slot_mean(kl, weights)
