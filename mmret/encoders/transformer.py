"""The shared BERT-style transformer encoder (query tower and item tower use the same weights).

Post-LN like the original BERT, so that BERT/MiniLM checkpoints import exactly
(`mmret.encoders.bert_import`):

  x = LN(word[ids] + position[pos] + type[type_ids])
  per layer:  x = LN(x + Attn(x));  x = LN(x + MLP(x))      (MLP: dense, GELU(erf), dense)

The embedding lookup and the layer stack are exposed separately (`Transformer.embed_tokens`,
`Transformer.__call__(inputs_embeds, ...)`) so that the item tower can concatenate title token
embeddings with image patch embeddings before the position/type embeddings are added.

Parameters are float32 and carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`);
`dtype` is the compute dtype. Activations are constrained as ('batch', 'length', 'embed').

Attention (`TransformerConfig.attention`): 'fused' calls `jax.nn.dot_product_attention` (the
API behind which JAX puts its fused kernels), 'einsum' is the two-einsum reference; both give
the same function (see `MultiHeadAttention` for the one case where 'fused' takes the einsum
path).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmret.ops import logical

# BERT initialises every weight with N(0, 0.02).
_INIT = nn.initializers.normal(stddev=0.02)
_ACT = ('batch', 'length', 'embed')
ATTENTIONS = ('fused', 'einsum')  # TransformerConfig.attention (config key model.attention)
# TransformerConfig.remat_policy (model.remat_policy): names in jax.checkpoint_policies.
REMAT_POLICIES = ('nothing_saveable', 'dots_with_no_batch_dims_saveable', 'dots_saveable',
                  'everything_saveable')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static hyper-parameters of an encoder (hashable, so usable as a module attribute).

  width: model width D. depth: layers. heads: attention heads (D % heads == 0). mlp_dim: hidden
  width of the MLP. dropout: hidden dropout rate (embeddings, attention output, MLP output).
  attention_dropout: dropout on the attention weights; None means `dropout` (BERT's recipe).
  dtype: compute dtype name.
  attention: one of ATTENTIONS. remat: rematerialise each layer in the backward pass, keeping
  what `jax.checkpoint_policies.<remat_policy>` saves (one of REMAT_POLICIES). scan: `nn.scan`
  over layers (params get a leading `layers` axis). vocab_size / max_len / type_vocab_size:
  embedding table sizes. layer_norm_eps: 1e-12 as in BERT.
  """
  width: int = 384
  depth: int = 6
  heads: int = 12
  mlp_dim: int = 1536
  dropout: float = 0.1
  attention_dropout: float | None = None
  dtype: str = 'float32'
  attention: str = 'fused'
  remat: bool = False
  # Saving nothing is the smallest activation memory, the reason to remat at all; the price is
  # one more forward pass per layer in the backward pass.
  remat_policy: str = 'nothing_saveable'
  scan: bool = False
  vocab_size: int = 30522
  max_len: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f'attention {self.attention!r}: choose from {ATTENTIONS}.')

  @property
  def attention_dropout_rate(self) -> float:
    return self.dropout if self.attention_dropout is None else self.attention_dropout
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'remat_policy {self.remat_policy!r}: choose from {REMAT_POLICIES}.')

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)


def maybe_remat(cfg: TransformerConfig, module_cls: type[nn.Module], **kwargs
                ) -> type[nn.Module]:
  """nn.remat(module_cls) with cfg.remat_policy, or module_cls itself when cfg.remat is off."""
  if not cfg.remat:
    return module_cls
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, cfg.remat_policy),
                  **kwargs)


def pair_mask(mask: jax.Array) -> jax.Array:
  """An attention mask for [B, H, Lq, L] logits: a key mask bool [B, L] (every query sees the
  valid keys) or a pairwise mask bool [B, Lq, L] (e.g. block-diagonal for packed rows)."""
  return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(K)) over valid keys: q [B, Lq, H, K], k [B, L, H, K], mask bool
  [B, L] or [B, Lq, L] (`pair_mask`) -> float32 [B, H, Lq, L]. A row with no valid key gets
  uniform (finite) weights."""
  # Logits and softmax in float32: bf16 softmax over long rows loses the small weights.
  logits = jnp.einsum('bqhk,bshk->bhqs', q, k, preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
  # A large finite negative (not -inf) keeps a row with no valid key finite (uniform weights).
  logits = jnp.where(pair_mask(mask), logits, jnp.float32(-1e9))
  return jax.nn.softmax(logits, axis=-1)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """The same function as `attention_weights` followed by weights @ v, as one
  `jax.nn.dot_product_attention` (q [B, Lq, H, K], k, v [B, L, H, K], mask bool [B, L] or
  [B, Lq, L] -> [B, Lq, H, K]).

  implementation=None lets JAX choose the kernel; in JAX 0.10 that is XLA's on every platform
  (cuDNN only when asked for by name, and only for bf16/fp16). It keeps our numerics: logits
  are accumulated in float32 for bf16 inputs, the softmax is float32, the weights are cast to
  the value dtype before the second product, and masked keys get a large finite negative
  logit, so a row with no valid key gets uniform weights, as in the einsum path.
  """
  return jax.nn.dot_product_attention(q, k, v, mask=pair_mask(mask), implementation=None)


def layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name,
                      scale_init=logical(nn.initializers.ones, ('embed',)),
                      bias_init=logical(nn.initializers.zeros, ('embed',)))


class MultiHeadAttention(nn.Module):
  """Self-attention with a key padding mask.

  x [B, L, D], mask bool [B, L] (keys) or [B, L, L] (query x key pairs) -> [B, Lq, D], where
  the queries are x_q [B, Lq, D] (default x).

  With cfg.attention='fused', training with attention-weight dropout > 0 still takes the einsum
  path: the fused API has no dropout on the attention weights, and silently dropping it would
  change the training recipe (BERT's/MiniLM's, and the one the default run's metrics were
  measured with). Evaluation, and training with `attention_dropout=0` (hidden dropout may stay
  on), take the fused path.
  """
  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, x_q: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    head_dim = cfg.width // cfg.heads

    # nn.Einsum, not nn.DenseGeneral: DenseGeneral initialises a flat kernel and reshapes it,
    # which breaks its logical-axis constraint whenever a mesh is active (flax re-runs the init
    # abstractly in `apply` to check shapes).
    def proj(name, inputs):
      return nn.Einsum(
          (cfg.width, cfg.heads, head_dim), 'bld,dhk->blhk', dtype=cfg.compute_dtype, name=name,
          kernel_init=logical(_INIT, ('embed', 'heads', 'kv')),
          bias_init=logical(nn.initializers.zeros, ('heads', 'kv')))(inputs)

    q = proj('query', x if x_q is None else x_q)  # [B, Lq, H, K]
    if mask.ndim == 3:
      mask = mask[:, :q.shape[1]]  # the rows of the queries computed (first_only: one)
    k, v = proj('key', x), proj('value', x)      # [B, L, H, K]
    rate = cfg.attention_dropout_rate
    drop_weights = rate > 0 and not self.deterministic
    if cfg.attention == 'fused' and not drop_weights:
      ctx = fused_attention(q, k, v, mask)
    else:
      weights = nn.Dropout(rate)(attention_weights(q, k, mask),
                                        deterministic=self.deterministic)
      ctx = jnp.einsum('bhqs,bshk->bqhk', weights.astype(cfg.compute_dtype), v)
    return nn.Einsum(
        (cfg.heads, head_dim, cfg.width), 'bqhk,hkd->bqd', dtype=cfg.compute_dtype, name='out',
        kernel_init=logical(_INIT, ('heads', 'kv', 'embed')),
        bias_init=logical(nn.initializers.zeros, ('embed',)))(ctx)


class EncoderLayer(nn.Module):
  """One post-LN BERT layer. x [B, L, D], mask bool [B, L] -> [B, L, D].

  first_only: compute the output of the first position only ([B, 1, D]); all positions are still
  attended to. A last layer whose only consumer is [CLS] then costs the K/V projections of the
  sequence plus one token's worth of the rest (the cross-modal encoder's last layer).
  """
  cfg: TransformerConfig
  deterministic: bool = True
  first_only: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
    x_q = x[:, :1] if self.first_only else None
    h = MultiHeadAttention(cfg, self.deterministic, name='attention')(x, mask, x_q)
    x = layer_norm(cfg, 'ln_attention')((x if x_q is None else x_q) + drop(h))
    x = nn.with_logical_constraint(x, _ACT)
    h = nn.Dense(cfg.mlp_dim, dtype=cfg.compute_dtype, name='mlp_in',
                 kernel_init=logical(_INIT, ('embed', 'mlp')),
                 bias_init=logical(nn.initializers.zeros, ('mlp',)))(x)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = nn.gelu(h, approximate=False)  # BERT's exact (erf) GELU.
    h = nn.Dense(cfg.width, dtype=cfg.compute_dtype, name='mlp_out',
                 kernel_init=logical(_INIT, ('mlp', 'embed')),
                 bias_init=logical(nn.initializers.zeros, ('embed',)))(h)
    x = layer_norm(cfg, 'ln_mlp')(x + drop(h))
    return nn.with_logical_constraint(x, _ACT)


class _ScannedLayer(EncoderLayer):
  """EncoderLayer with the (carry, broadcast) -> (carry, output) signature nn.scan needs."""

  def __call__(self, x, mask):  # pytype: disable=signature-mismatch
    return super().__call__(x, mask), None


class EncoderStack(nn.Module):
  """`cfg.depth` layers: plain Python loop, or nn.remat / nn.scan variants (same maths).

  Plain params live under `layer_{i}`; scanned params under `layers` with a leading [depth] axis
  whose logical name is `layers` (unassigned in the mesh rules, so it is never sharded).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.cfg
    if cfg.scan and cfg.depth > 1:  # a loop of one layer only adds loop overhead to compile
      # prevent_cse=False: inside scan the loop already keeps XLA from merging the recompute.
      layer_cls = maybe_remat(cfg, _ScannedLayer, prevent_cse=False)
      stack = nn.scan(layer_cls, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast,), length=cfg.depth,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = stack(cfg, not train, name='layers')(x, mask)
      return x
    layer_cls = maybe_remat(cfg, EncoderLayer)
    for i in range(cfg.depth):
      x = layer_cls(cfg, not train, name=f'layer_{i}')(x, mask)
    return x


class Transformer(nn.Module):
  """Embeddings + encoder stack.

  embed_tokens(ids int [B, L]) -> word embeddings [B, L, D].
  __call__(inputs_embeds [B, L, D], type_ids int [B, L], mask bool [B, L],
           positions int [B, L] | None (default 0..L-1), train) -> hidden states [B, L, D].
  attend(x [..., D]) -> x @ word_embeddings.T [..., V]  (the tied MLM decoder).
  """
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.word_embeddings = self.param(
        'word_embeddings', logical(_INIT, ('vocab', 'embed')), (cfg.vocab_size, cfg.width))
    self.position_embeddings = self.param(
        'position_embeddings', logical(_INIT, ('length', 'embed')), (cfg.max_len, cfg.width))
    self.type_embeddings = self.param(
        'type_embeddings', logical(_INIT, ('classes', 'embed')),
        (cfg.type_vocab_size, cfg.width))
    self.embed_ln = layer_norm(cfg, 'embed_ln')
    self.embed_dropout = nn.Dropout(cfg.dropout)
    self.encoder = EncoderStack(cfg, name='encoder')

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    x = jnp.take(self.word_embeddings, ids, axis=0).astype(self.cfg.compute_dtype)
    return nn.with_logical_constraint(x, _ACT)

  def __call__(self, inputs_embeds: jax.Array, type_ids: jax.Array, mask: jax.Array,
               positions: jax.Array | None = None, train: bool = False) -> jax.Array:
    cfg = self.cfg
    length = inputs_embeds.shape[1]
    if length > cfg.max_len:
      raise ValueError(f'sequence length {length} exceeds the encoder max_len {cfg.max_len}.')
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), inputs_embeds.shape[:2])
    x = (inputs_embeds
         + jnp.take(self.position_embeddings, positions, axis=0).astype(cfg.compute_dtype)
         + jnp.take(self.type_embeddings, type_ids, axis=0).astype(cfg.compute_dtype))
    x = self.embed_ln(x)
    x = self.embed_dropout(x, deterministic=not train)
    x = nn.with_logical_constraint(x, _ACT)
    return self.encoder(x, mask, train=train)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum('...d,vd->...v', x, self.word_embeddings.astype(x.dtype))
