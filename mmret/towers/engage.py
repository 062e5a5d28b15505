"""Que2Engage two-tower model (DESIGN.md §4): engagement-aware multitask EBR.

  query tower     [CLS] query [SEP] -> shared encoder -> masked mean  ┐
                  hashed char trigrams -> EmbeddingBag (mean)          ┴ concat -> MLP -> L2
  document tower  [CLS] title [SEP] | image token | context token -> fusion transformer
                  -> [CLS] -> projection -> L2
    image token   per image: a trained image encoder (mmret.encoders.image.PatchEncoder,
                  `model.image_encoder`: 'linear' patch embedding | small per-patch 'resnet' |
                  'features' = precomputed batch['image_features']), mean over its patch
                  tokens (after a GELU) -> shared MLP phi; several images fused deep-sets style:
                  LayerNorm(rho(mean of phi over the item's present images))
    context token numeric context -> masked BatchNorm -> MLP (mmret.encoders.context)

The fusion transformer is the shared encoder (`mmret.encoders.transformer.Transformer`, one set
of weights for both towers when `model.share_encoder`, else a second instance): early fusion, as
the source's production model (0 text-encoder layers, all layers multimodal). Token types tell
the modalities apart: 0 text, 1 image, 2 context.

A modality that is missing in the data (no image, empty title, no context value) or dropped
(modality dropout at train time, `remove` at evaluation; `mmret.towers.modality`) has its tokens
zeroed and masked out of attention, so "dropped" looks exactly like "missing". [CLS] is never
dropped, so every document has a finite vector.

Batches (docs/ARCHITECTURE.md, "Engagement contracts"): document fields are [N, ...] or, in a
training page batch, [B, G, ...] with G = 1 + H (the engaged item and H page negatives); the
model flattens them to N = B * G.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmret.encoders.bag import EmbeddingBag
from mmret.encoders.context import ContextEncoder
from mmret.encoders.image import ImageConfig, PatchEncoder
from mmret.encoders.transformer import Transformer, TransformerConfig
from mmret.ops import dense, l2_normalize, logical, masked_mean, padded_size
from mmret.towers import modality

_INIT = nn.initializers.normal(stddev=0.02)
_FAN_IN = nn.initializers.lecun_normal()
IMAGE_MODES = ('linear', 'resnet', 'features')
DOC_FIELDS = ('title_tokens', 'title_mask', 'text_present', 'image', 'image_present',
              'context', 'context_present')
TEXT, IMAGE, CONTEXT = 0, 1, 2  # token types


def transformer_config(model: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
  """vocab_size: the tokenizer's (from the data), padded to model.vocab_pad_multiple."""
  return TransformerConfig(
      width=model.width, depth=model.depth, heads=model.heads, mlp_dim=model.mlp_dim,
      dropout=model.dropout, attention_dropout=model.get('attention_dropout'),
      dtype=model.dtype, attention=model.attention, remat=model.remat,
      remat_policy=model.remat_policy, scan=model.scan,
      vocab_size=padded_size(vocab_size, model.vocab_pad_multiple), max_len=model.max_len,
      type_vocab_size=3)


class Mlp(nn.Module):
  """x [..., I] -> Dense(hidden) -> GELU -> Dense(features) [..., features].

  init: kernel initialiser (default N(0, 0.02)); the image path uses a fan-in scaled one so
  that its chain of small layers does not shrink the image signal towards zero at init.
  """
  hidden: int
  features: int
  in_axis: str = 'embed'
  init: Callable = _INIT

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(dense(self.hidden, (self.in_axis, 'mlp'), 'dense_in', init=self.init)(x))
    return dense(self.features, ('mlp', 'embed'), 'dense_out', init=self.init)(h)


def image_config(model: ml_collections.ConfigDict) -> ImageConfig:
  """The document tower's PatchEncoder config (`model.image_*` keys of configs/engage.py)."""
  mode = model.image_encoder
  if mode not in IMAGE_MODES:
    raise ValueError(f'config key model.image_encoder={mode!r}: choose from {IMAGE_MODES}.')
  return ImageConfig(mode=mode, patch_size=model.patch_size, width=model.width,
                     resnet_channels=model.resnet_channels, resnet_blocks=model.resnet_blocks,
                     groups=model.resnet_groups, dtype=model.dtype)


class EngageModel(nn.Module):
  """`config` is the `model` section of configs/engage.py.

  __call__(batch, train) -> {'query_vec' [B, E], 'doc_vec' [B, G, E], 'keep_<modality>' [B, G]}
  encode_query(batch) -> [B, E]; encode_document(batch, remove=()) -> [N, E].
  rng streams at train time: 'dropout' (transformer dropout), 'modality' (modality dropout).
  Collections: 'params', 'batch_stats' (the context BatchNorm).
  """
  config: ml_collections.ConfigDict
  vocab_size: int  # the tokenizer's (from the data)

  def setup(self):
    c = self.config
    tcfg = transformer_config(c, self.vocab_size)
    self.encoder = Transformer(tcfg)
    self.doc_encoder = self.encoder if c.share_encoder else Transformer(tcfg)
    self.trigram_bag = EmbeddingBag(c.trigram_buckets, c.width)
    self.query_mlp = Mlp(c.mlp_hidden, c.out_dim)
    self.image_encoder = PatchEncoder(image_config(c))                # trained, per image
    self.image_phi = Mlp(c.mlp_hidden, c.width, init=_FAN_IN)         # shared over images
    self.image_rho = Mlp(c.mlp_hidden, c.width, init=_FAN_IN)
    # The image token at the scale of a unit-variance input (the fusion transformer adds
    # position/type embeddings and normalises the sum, as for a word embedding).
    self.image_norm = nn.LayerNorm(name='image_norm',
                                   scale_init=logical(nn.initializers.ones, ('embed',)),
                                   bias_init=logical(nn.initializers.zeros, ('embed',)))
    if c.context_token:
      self.context_encoder = ContextEncoder(c.width, c.mlp_hidden,
                                            log_transform=c.context_log,
                                            momentum=c.bn_momentum)
    self.doc_proj = dense(c.out_dim, ('embed', 'mlp'), 'doc_proj')

  # -- query tower ------------------------------------------------------------------------------

  def encode_query(self, batch, train: bool = False) -> jax.Array:
    """query_tokens/query_mask [B, Lq], trigram_ids/trigram_mask [B, T] -> L2-normed [B, E]."""
    tokens, mask = batch['query_tokens'], jnp.asarray(batch['query_mask'])
    h = self.encoder(self.encoder.embed_tokens(tokens), jnp.zeros_like(tokens), mask,
                     train=train)
    text = masked_mean(h, mask)                                          # [B, D]
    bag = self.trigram_bag(batch['trigram_ids'], batch['trigram_mask'])  # [B, D]
    return l2_normalize(self.query_mlp(jnp.concatenate([text, bag], axis=-1)))

  # -- document tower ---------------------------------------------------------------------------

  def _image_embeddings(self, batch) -> jax.Array:
    """One embedding per image: float32 [N, M, D] = mean over patches of GELU(patch token).

    image uint8 [N, S, S, 3] or [N, M, S, S, 3] ('linear' / 'resnet'), or, in 'features' mode,
    batch['image_features'] float [N, M, F] (one precomputed vector per image) or
    [N, M, P, F] (precomputed patch features).
    """
    if self.config.image_encoder == 'features':
      if 'image_features' not in batch:
        raise ValueError("model.image_encoder='features' needs batch['image_features'] "
                         '[N, M, F] or [N, M, P, F].')
      feats = jnp.asarray(batch['image_features'], jnp.float32)
      if feats.ndim == 2:                                          # [N, F]: one image per item
        feats = feats[:, None]
      if feats.ndim == 3:                                          # one vector = one "patch"
        feats = feats[:, :, None]
      n, m = feats.shape[:2]
      tokens = self.image_encoder(patch_features=feats.reshape(n * m, *feats.shape[2:]))
    else:
      image = jnp.asarray(batch['image'])
      if image.ndim == 4:                                          # one image per item
        image = image[:, None]
      n, m = image.shape[:2]
      tokens = self.image_encoder(image=image.reshape(n * m, *image.shape[2:]))  # [NM, P, D]
    # GELU before the mean: with the linear patch embedding a plain mean would be a linear map
    # of the average patch (colour layout and texture averaged away); the mean of a
    # nonlinearity is a bag of patch features ("how many patches look red / striped").
    return jnp.mean(nn.gelu(tokens.astype(jnp.float32)), axis=1).reshape(n, m, -1)

  def _image_token(self, batch) -> tuple[jax.Array, jax.Array]:
    """Deep-sets fusion of an item's images -> (token [N, D], any image present bool [N])."""
    emb = self._image_embeddings(batch)                           # [N, M, D]
    n, m = emb.shape[:2]
    present = jnp.asarray(batch.get('image_present', jnp.ones((n, m), bool)), bool)
    present = jnp.broadcast_to(present.reshape(n, -1), (n, m))
    phi = self.image_phi(emb)                                     # [N, M, D]
    pooled = masked_mean(phi, present)                            # [N, D]
    return self.image_norm(self.image_rho(pooled)), jnp.any(present, axis=1)

  def encode_document(self, batch, train: bool = False, remove: Sequence[str] = (),
                      return_keep: bool = False):
    """Document fields [N, ...] (DOC_FIELDS) -> L2-normed [N, E] (and the keep masks).

    remove: modalities removed for every document (robustness evaluation).
    """
    c = self.config
    tokens = jnp.asarray(batch['title_tokens'])
    n, lt = tokens.shape
    rng = self.make_rng('modality') if train and any(
        c.modality_dropout[k] > 0 for k in modality.MODALITIES) else None
    rates = {k: float(c.modality_dropout[k]) for k in modality.MODALITIES}
    keep = modality.modality_keep(rng, n, rates, train=train, remove=tuple(remove))

    text_on = jnp.asarray(batch.get('text_present', jnp.ones((n,), bool)), bool) & keep['text']
    title_valid = jnp.asarray(batch['title_mask'], bool) & text_on[:, None]
    title_valid = title_valid.at[:, 0].set(True)   # [CLS] always attends: a finite vector
    x_title = self.encoder.embed_tokens(tokens)
    # Dropped text is zeroed, not only masked, so nothing of it reaches [CLS] even through
    # the embedding LayerNorm of the [CLS] position.
    x_title = jnp.where(title_valid[..., None], x_title, 0.0)
    parts, valid = [x_title], [title_valid]
    types = [jnp.full((lt,), TEXT, jnp.int32)]

    img, img_any = self._image_token(batch)
    img_on = img_any & keep['image']
    parts.append(jnp.where(img_on[:, None], img, 0.0)[:, None].astype(x_title.dtype))
    valid.append(img_on[:, None])
    types.append(jnp.array([IMAGE], jnp.int32))

    if c.context_token:
      present = jnp.asarray(batch['context_present'], bool)
      ctx = self.context_encoder(batch['context'], present, train=train)
      ctx_on = jnp.any(present, axis=1) & keep['context']
      parts.append(jnp.where(ctx_on[:, None], ctx, 0.0)[:, None].astype(x_title.dtype))
      valid.append(ctx_on[:, None])
      types.append(jnp.array([CONTEXT], jnp.int32))

    x = jnp.concatenate(parts, axis=1)
    mask = jnp.concatenate(valid, axis=1)
    type_ids = jnp.broadcast_to(jnp.concatenate(types), mask.shape)
    h = self.doc_encoder(x, type_ids, mask, train=train)
    vec = l2_normalize(self.doc_proj(h[:, 0]))
    return (vec, keep) if return_keep else vec

  def __call__(self, batch, train: bool = False):
    """A training page batch -> query vectors [B, E] and document vectors [B, G, E]."""
    b, g = batch['title_tokens'].shape[:2]
    docs = {k: jnp.reshape(batch[k], (b * g, *jnp.shape(batch[k])[2:]))
            for k in DOC_FIELDS if k in batch}
    if 'image_features' in batch:
      docs['image_features'] = jnp.reshape(batch['image_features'],
                                           (b * g, *jnp.shape(batch['image_features'])[2:]))
    query_vec = self.encode_query(batch, train=train)
    doc_vec, keep = self.encode_document(docs, train=train, return_keep=True)
    out = {'query_vec': query_vec, 'doc_vec': doc_vec.reshape(b, g, -1)}
    out.update({f'keep_{k}': v.reshape(b, g) for k, v in keep.items()})
    return out
