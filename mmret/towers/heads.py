"""Task heads of the stage-1 model (DESIGN.md §1) and retrieval-vector pooling.

  MlmHead   hidden [B, P, D] -> logits [B, P, V]; BERT transform (dense, GELU, LN) then a decoder
            tied to the word embeddings plus a per-head bias (separate heads for query / title).
  MpmHead   hidden [B, P, D] -> log-probabilities [B, P, C] over the MPM patch classes.
  QicHead   pooled [B, D] -> L2-normalised [B, qic_dim] (256 in the source).
  QimHead   cross-modal [CLS] [B, D] -> one matching logit [B] (BERT pooler: dense + tanh).

All heads return float32 so that losses never see bf16.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmret.encoders.transformer import TransformerConfig, layer_norm
from mmret.ops import dense, l2_normalize, logical, masked_mean



POOLINGS = ('mean', 'cls')  # config.model.pooling


def pool(hidden: jax.Array, mask: jax.Array, pooling: str = 'mean') -> jax.Array:
  """Tower output -> un-normalised vector. hidden [B, L, D], mask bool [B, L] -> float32 [B, D].

  'mean': mean over non-padding tokens (the source's choice); 'cls': the first token.
  """
  if pooling == 'mean':
    return masked_mean(hidden, mask)
  if pooling == 'cls':
    return hidden[:, 0].astype(jnp.float32)
  raise ValueError(f"model.pooling={pooling!r}: choose 'mean' or 'cls'.")


def retrieval_vector(hidden: jax.Array, mask: jax.Array, pooling: str = 'mean',
                     normalize: bool = True) -> jax.Array:
  """pool(...) then optionally L2-normalise. -> float32 [B, D]."""
  v = pool(hidden, mask, pooling)
  return l2_normalize(v) if normalize else v


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
  """x [B, L, D], positions int [B, P] -> [B, P, D]."""
  return jnp.take_along_axis(x, positions[..., None], axis=1)


class MlmHead(nn.Module):
  """Masked-token prediction. __call__(hidden [B, P, D], attend) -> float32 logits [B, P, V].

  `attend` maps [..., D] -> [..., V] with the shared word embeddings (weight tying).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, attend: Callable[[jax.Array], jax.Array]) -> jax.Array:
    cfg = self.cfg
    h = dense(cfg.width, ('embed', 'mlp'), 'transform', dtype=cfg.compute_dtype)(hidden)
    h = layer_norm(cfg, 'transform_ln')(nn.gelu(h, approximate=False))
    logits = attend(h).astype(jnp.float32)
    bias = self.param('bias', logical(nn.initializers.zeros, ('vocab',)), (cfg.vocab_size,))
    logits = logits + bias
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class MpmHead(nn.Module):
  """Masked-patch class distribution. hidden [B, P, D] -> float32 log-probs [B, P, C]."""
  cfg: TransformerConfig
  num_classes: int

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = dense(cfg.width, ('embed', 'mlp'), 'transform', dtype=cfg.compute_dtype)(hidden)
    h = layer_norm(cfg, 'transform_ln')(nn.gelu(h, approximate=False))
    logits = dense(self.num_classes, ('embed', 'classes'), 'classifier',
                   dtype=cfg.compute_dtype)(h)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


class QicHead(nn.Module):
  """QIC projection. pooled [B, D] -> L2-normalised float32 [B, dim]."""
  dim: int
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    return l2_normalize(dense(self.dim, ('embed', 'mlp'), 'project',
                              dtype=jnp.dtype(self.dtype))(pooled))


class QimHead(nn.Module):
  """Query-item matching. cross-modal [CLS] state [B, D] -> float32 logit [B]."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, cls: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = jnp.tanh(dense(cfg.width, ('embed', 'mlp'), 'pooler', dtype=cfg.compute_dtype)(cls))
    logit = dense(1, ('mlp', 'classes'), 'classifier', dtype=cfg.compute_dtype)(h)
    return logit[..., 0].astype(jnp.float32)
