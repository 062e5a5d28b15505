"""Token masking (MLM), patch masking (MPM) and MPM soft targets.

MLM (BERT): each candidate text token (a real token that is neither the leading [CLS] nor the
trailing [SEP]) is selected with probability `prob` (15%); at most `max_predictions` selected
positions per row are kept (chosen at random), and only those are masked and predicted, so the
logits stay [B, P, V] instead of [B, L, V]. A masked token becomes [MASK] 80% of the time, a
random vocabulary token 10%, and stays unchanged 10%.

MPM: each present patch is selected with probability `prob` (25%), again capped at
`max_predictions`; the model replaces selected patch embeddings by a learned mask embedding.
The target of a masked patch is a soft class distribution over a fixed codebook of C patch
"colour words":

  f = patch_colour_features(patch)           mean RGB in [0, 1] of each cell of a grid x grid
                                             split of the patch, F = grid * grid * 3
  target_k = softmax_k(-||f - c_k||^2 / T)   c = k-means codebook [C, F] fitted on training
                                             patches (`fit_mpm_codebook`), T = temperature

so the KL-divergence MPM loss asks the model to recover the coarse colour layout of the hidden
patch from the other patches and the title. In 'features' mode the provided patch features are
f (the codebook must then be fitted on those features with `kmeans`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from mmret.encoders.image import patchify


def _select(rng: jax.Array, candidates: jax.Array, prob: float, max_predictions: int):
  """Bernoulli(prob) selection among candidates, capped at max_predictions per row.

  candidates bool [B, L] -> (positions int32 [B, P], weights float32 [B, P], masked bool [B, L]);
  `masked` is True exactly at the positions with weight 1.
  """
  k_select, k_order = jax.random.split(rng)
  length = candidates.shape[1]
  selected = candidates & jax.random.bernoulli(k_select, prob, candidates.shape)
  # Random priorities in (1, 2) for selected positions, <= 0 otherwise: top_k keeps a random
  # subset of the selected positions when more than max_predictions were drawn.
  priority = jnp.where(selected, 1.0 + jax.random.uniform(k_order, candidates.shape, minval=1e-6),
                       -jnp.arange(length, dtype=jnp.float32)[None, :])
  p = min(max_predictions, length)
  _, positions = jax.lax.top_k(priority, p)
  weights = jnp.take_along_axis(selected, positions, axis=1)
  masked = jnp.any((positions[:, :, None] == jnp.arange(length)) & weights[:, :, None], axis=1)
  if p < max_predictions:  # Keep the output width fixed at max_predictions.
    pad = max_predictions - p
    positions = jnp.pad(positions, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  return positions.astype(jnp.int32), weights.astype(jnp.float32), masked


def mlm_candidates(mask: jax.Array) -> jax.Array:
  """Real tokens except the first ([CLS]) and the last real one ([SEP]). bool [B, L]."""
  nxt = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
  first = jnp.arange(mask.shape[1])[None, :] == 0
  return mask & nxt & ~first


def mask_tokens(rng: jax.Array, tokens: jax.Array, mask: jax.Array, *, prob: float,
                max_predictions: int, mask_token_id: int, vocab_size: int):
  """BERT masking of a token batch.

  Args:
    tokens: int32 [B, L]; mask: bool [B, L] (True on real tokens, [CLS] first, [SEP] last).
  Returns:
    masked_tokens int32 [B, L], positions int32 [B, P], labels int32 [B, P] (original ids),
    weights float32 [B, P] (1 where a prediction is made, 0 on padding slots), P=max_predictions.
  """
  k_sel, k_rule, k_rand = jax.random.split(rng, 3)
  positions, weights, masked = _select(k_sel, mlm_candidates(mask), prob, max_predictions)
  labels = jnp.take_along_axis(tokens, positions, axis=1) * (weights > 0)
  rule = jax.random.uniform(k_rule, tokens.shape)
  random_ids = jax.random.randint(k_rand, tokens.shape, 0, vocab_size, dtype=tokens.dtype)
  replaced = jnp.where(rule < 0.8, jnp.asarray(mask_token_id, tokens.dtype),
                       jnp.where(rule < 0.9, random_ids, tokens))
  masked_tokens = jnp.where(masked, replaced, tokens)
  return masked_tokens, positions, labels.astype(jnp.int32), weights


def mask_patches(rng: jax.Array, present: jax.Array, *, prob: float, max_predictions: int):
  """Selects patches to mask. present bool [B, P] (False for items without an image).

  Returns positions int32 [B, Pp], weights float32 [B, Pp], masked bool [B, P].
  """
  return _select(rng, present, prob, max_predictions)


def patch_colour_features(images, patch_size: int, grid: int = 2):
  """Per-patch coarse colour layout: uint8 [B, H, W, 3] -> float32 [B, P, grid*grid*3] in [0, 1].

  Works on numpy and jax arrays (the model computes it on device, the codebook fit in numpy).
  """
  xp = jnp if isinstance(images, jax.Array) else np
  patches = patchify(images.astype(xp.float32) / 255.0, patch_size)  # [B, P, s, s, 3]
  b, p, s, _, c = patches.shape
  if s % grid:
    raise ValueError(f'patch_size={s} is not a multiple of the MPM feature grid {grid}.')
  cells = patches.reshape(b, p, grid, s // grid, grid, s // grid, c).mean(axis=(3, 5))
  return cells.reshape(b, p, grid * grid * c)


def kmeans(x: np.ndarray, num_classes: int, seed: int = 0, iters: int = 25) -> np.ndarray:
  """Lloyd's k-means with k-means++ seeding. x [N, F] -> centres float32 [num_classes, F]."""
  x = np.asarray(x, np.float64)
  if len(x) < num_classes:
    raise ValueError(f'k-means needs at least num_classes={num_classes} points, got {len(x)}.')
  rs = np.random.RandomState(seed)
  centres = [x[rs.randint(len(x))]]
  d2 = np.sum((x - centres[0]) ** 2, axis=1)
  for _ in range(1, num_classes):
    probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
    centres.append(x[rs.choice(len(x), p=probs)])
    d2 = np.minimum(d2, np.sum((x - centres[-1]) ** 2, axis=1))
  centres = np.stack(centres)
  for _ in range(iters):
    dist = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
    assign = np.argmin(dist, axis=1)
    for k in range(num_classes):
      members = x[assign == k]
      if len(members):  # An empty cluster keeps its old centre.
        centres[k] = members.mean(axis=0)
  return centres.astype(np.float32)


def fit_mpm_codebook(images: np.ndarray, patch_size: int, num_classes: int, seed: int = 0,
                     grid: int = 2) -> np.ndarray:
  """k-means codebook of patch colour features. images uint8 [N, H, W, 3] -> float32 [C, F]."""
  feats = patch_colour_features(np.asarray(images), patch_size, grid)
  return kmeans(feats.reshape(-1, feats.shape[-1]), num_classes, seed)


def soft_targets(features: jax.Array, codebook: jax.Array, temperature: float) -> jax.Array:
  """softmax(-||f - c_k||^2 / T). features [..., F], codebook [C, F] -> float32 [..., C]."""
  f = features.astype(jnp.float32)
  c = codebook.astype(jnp.float32)
  d2 = jnp.sum(f * f, -1, keepdims=True) - 2 * f @ c.T + jnp.sum(c * c, -1)
  return jax.nn.softmax(-jnp.maximum(d2, 0.0) / temperature, axis=-1)
