"""Stage-1 multimodal pre-training model: twin towers under a cross-modal encoder (DESIGN.md §1).

  query tower   [CLS] query [SEP]                        -> shared encoder -> q_h [B, Lq, D]
  item tower    [CLS] title [SEP] patch_1 .. patch_P     -> shared encoder -> i_h [B, Lt+P, D]
                (type 0 = text, 1 = image; title masked when text_present is False, patches
                masked when image_present is False; [CLS] always valid, so an item with neither
                modality still gets a finite vector)
  cross-modal   [CLS'] q_h i_h -> its own small encoder -> [CLS'] state -> QIM logit

Tasks: MLM on the query tower and (separately) on the title part of the item tower; MPM on the
patch part of the item tower; QIC on pooled vectors of both towers; QIM on the cross [CLS'] for
(query, clicked item) vs (query, hardest in-batch negative under QIC); QIM2 the same with the
item tower re-run on [CLS] + patches only (title removed, so the match must come from the image).

One tower pass per side serves MLM/MPM and QIC/QIM (masked inputs at train time, as in
BERT-style multi-task pre-training); eval (`encode_query`, `encode_item`, train=False) never
masks. Output keys: see ARCHITECTURE.md "Model contract", plus `qim_negative` int32 [B] (the
batch row used as each query's hard negative) and `qim_weights` float32 [B] (0 for rows whose batch
holds no true negative: every item equals the row's item).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmret.encoders.image import PatchEncoder
from mmret.encoders.transformer import EncoderLayer, EncoderStack, Transformer, TransformerConfig
from mmret.encoders.transformer import layer_norm
from mmret.ops import logical
from mmret.towers import config as config_lib
from mmret.towers import heads, masking, negatives

_ACT = ('batch', 'length', 'embed')


class CrossEncoder(nn.Module):
  """[CLS'] + query states + item states -> [CLS'] state.

  q_h [B, Lq, D], q_mask bool [B, Lq], i_h [B, Li, D], i_mask bool [B, Li] -> [B, D].
  A learned segment embedding tells query from item positions. `cfg.depth - 1` full layers,
  then a last layer that computes the [CLS'] position only (nothing else is read from it).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, q_h, q_mask, i_h, i_mask, train: bool = False):
    cfg = self.cfg
    b = q_h.shape[0]
    cls = self.param('cls', logical(nn.initializers.normal(0.02), ('embed',)), (cfg.width,))
    seg = self.param('segment_embeddings', logical(nn.initializers.normal(0.02),
                                                   ('classes', 'embed')), (2, cfg.width))
    dtype = cfg.compute_dtype
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.width)),
                         q_h.astype(dtype) + seg[0].astype(dtype),
                         i_h.astype(dtype) + seg[1].astype(dtype)], axis=1)
    x = nn.with_logical_constraint(layer_norm(cfg, 'input_ln')(x), _ACT)
    mask = jnp.concatenate([jnp.ones((b, 1), bool), q_mask, i_mask], axis=1)
    if cfg.depth > 1:
      x = EncoderStack(dataclasses.replace(cfg, depth=cfg.depth - 1), name='encoder')(
          x, mask, train=train)
    return EncoderLayer(cfg, not train, first_only=True, name='last')(x, mask)[:, 0]


class _Codebook(nn.Module):
  """The fixed MPM codebook [C, F] in the non-trainable 'constants' collection.

  Initialised to uniform random colour words (deterministic) until `set_codebook` installs a
  k-means codebook fitted on training images (`masking.fit_mpm_codebook`).
  """
  num_classes: int
  feature_dim: int

  @nn.compact
  def __call__(self):
    shape = (self.num_classes, self.feature_dim)
    return self.variable('constants', 'codebook',
                         lambda: jax.random.uniform(jax.random.key(0), shape)).value


class PretrainModel(nn.Module):
  """The stage-1 model. `config` is the `model` ConfigDict (configs/pretrain.py); vocab_size and
  mask_token_id come from the tokenizer (PreparedData.tokenizer), not from the config.

  __call__(batch, train) -> out dict (ARCHITECTURE.md); encode_query(batch) -> [B, D];
  encode_item(batch) -> [B, D]. rng streams at train time: 'dropout', 'masking'.
  """
  config: ml_collections.ConfigDict
  vocab_size: int
  mask_token_id: int

  def setup(self):
    c = self.config
    self.tcfg = config_lib.transformer_config(c, self.vocab_size)
    self.encoder = Transformer(self.tcfg)
    self.patch_encoder = PatchEncoder(config_lib.image_config(c))
    self.mask_patch = self.param('mask_patch', logical(nn.initializers.normal(0.02), ('embed',)),
                                 (c.width,))
    self.cross = CrossEncoder(config_lib.transformer_config(c, self.vocab_size, cross=True))
    self.mlm_query = heads.MlmHead(self.tcfg)
    self.mlm_title = heads.MlmHead(self.tcfg)
    self.mpm = heads.MpmHead(self.tcfg, c.mpm_classes)
    # One projection for both towers keeps query and item vectors in one space.
    self.qic = heads.QicHead(c.qic_dim, c.dtype)
    self.qim = heads.QimHead(self.tcfg)
    self.mpm_codebook = _Codebook(c.mpm_classes, config_lib.mpm_feature_dim(c))

  # -- towers ---------------------------------------------------------------------------------

  def _query_tower(self, tokens, mask, train):
    """tokens int [B, Lq], mask bool [B, Lq] -> hidden [B, Lq, D]."""
    return self.encoder(self.encoder.embed_tokens(tokens), jnp.zeros_like(tokens), mask,
                        train=train)

  def _patches(self, batch):
    """Patch embeddings [B, P, D] and their validity bool [B, P]."""
    p = self.patch_encoder(batch.get('image'), batch.get('patch_features'))
    b, n = p.shape[:2]
    present = jnp.asarray(batch.get('image_present', jnp.ones((b,), bool)))
    return p, jnp.broadcast_to(present[:, None], (b, n))

  def _item_tower(self, batch, title_tokens, patches, patch_valid, train, with_title=True):
    """[CLS] title [SEP] patches -> (hidden [B, L, D], mask bool [B, L]).

    Patches take positions 0..P-1 of their own (type 1 tells them from text), so the title's
    padding length never shifts them. with_title=False keeps only [CLS] + patches (QIM2) with the
    same positions and types, so the patch tokens look exactly as they do with the title present.
    """
    b, lt = title_tokens.shape
    n = patches.shape[1]
    text_present = batch.get('text_present', jnp.ones((b,), bool))
    title_valid = jnp.asarray(batch['title_mask']) & jnp.asarray(text_present)[:, None]
    title_valid = title_valid.at[:, 0].set(True)  # [CLS] is always attended to / pooled.
    positions = jnp.concatenate([jnp.arange(lt), jnp.arange(n)])
    types = jnp.concatenate([jnp.zeros((lt,), jnp.int32), jnp.ones((n,), jnp.int32)])
    emb = self.encoder.embed_tokens(title_tokens)
    if not with_title:
      emb, title_valid = emb[:, :1], title_valid[:, :1]
      positions = jnp.concatenate([positions[:1], positions[lt:]])
      types = jnp.concatenate([types[:1], types[lt:]])
    x = jnp.concatenate([emb, patches.astype(emb.dtype)], axis=1)
    mask = jnp.concatenate([title_valid, patch_valid], axis=1)
    shape = x.shape[:2]
    h = self.encoder(x, jnp.broadcast_to(types, shape), mask,
                     positions=jnp.broadcast_to(positions, shape), train=train)
    return h, mask

  def _vector(self, hidden, mask):
    """The retrieval vector: pooled encoder output ('encoder', D-dim, as the source extracts
    it) or its QIC projection ('qic', qic_dim, the space the QIC loss trains directly)."""
    c = self.config
    if c.retrieval_space == 'qic':
      return self.qic(heads.pool(hidden, mask, c.pooling))  # QicHead L2-normalises
    return heads.retrieval_vector(hidden, mask, c.pooling, c.normalize)

  # -- eval -----------------------------------------------------------------------------------

  def encode_query(self, batch):
    """batch with query_tokens/query_mask -> float32 [B, D] retrieval vectors."""
    h = self._query_tower(batch['query_tokens'], batch['query_mask'], train=False)
    return self._vector(h, batch['query_mask'])

  def encode_item(self, batch):
    """batch with title_tokens/title_mask, image (or patch_features), image_present,
    text_present -> float32 [B, D] retrieval vectors."""
    patches, patch_valid = self._patches(batch)
    h, mask = self._item_tower(batch, batch['title_tokens'], patches, patch_valid, train=False)
    return self._vector(h, mask)

  # -- training -------------------------------------------------------------------------------

  def _mask_text(self, tokens, mask, max_predictions, train):
    if not train:
      zeros = jnp.zeros((tokens.shape[0], max_predictions), jnp.int32)
      return tokens, zeros, zeros, zeros.astype(jnp.float32)
    c = self.config
    return masking.mask_tokens(self.make_rng('masking'), tokens, mask, prob=c.mlm_prob,
                               max_predictions=max_predictions, mask_token_id=self.mask_token_id,
                               vocab_size=self.vocab_size)

  def _mpm_features(self, batch):
    """Target features of every patch, float32 [B, P, F]."""
    c = self.config
    if c.image_encoder == 'features':
      return batch['patch_features'].astype(jnp.float32)
    return masking.patch_colour_features(jnp.asarray(batch['image']), c.patch_size, c.mpm_grid)

  def __call__(self, batch, train: bool = False):
    c = self.config
    out = {}
    # Query tower (+ query MLM).
    q_tokens, q_mask = batch['query_tokens'], batch['query_mask']
    q_in, q_pos, q_labels, q_w = self._mask_text(q_tokens, q_mask,
                                                 c.mlm_max_predictions_query, train)
    q_h = self._query_tower(q_in, q_mask, train)

    # Item tower (+ title MLM, MPM).
    t_tokens = batch['title_tokens']
    t_in, t_pos, t_labels, t_w = self._mask_text(t_tokens, batch['title_mask'],
                                                 c.mlm_max_predictions_title, train)
    patches, patch_valid = self._patches(batch)
    if train:
      p_pos, p_w, p_masked = masking.mask_patches(
          self.make_rng('masking'), patch_valid, prob=c.mpm_prob,
          max_predictions=c.mpm_max_predictions)
      masked_patches = jnp.where(p_masked[..., None], self.mask_patch.astype(patches.dtype),
                                 patches)
    else:
      p_pos = jnp.zeros((patches.shape[0], c.mpm_max_predictions), jnp.int32)
      p_w = p_pos.astype(jnp.float32)
      masked_patches = patches
    i_h, i_mask = self._item_tower(batch, t_in, masked_patches, patch_valid, train)

    out['query_vec'] = self._vector(q_h, q_mask)
    out['item_vec'] = self._vector(i_h, i_mask)

    # MLM / MPM at the gathered positions only ([B, P, V] logits, never [B, L, V]).
    lt = t_tokens.shape[1]
    out['mlm_query_logits'] = self.mlm_query(heads.gather_positions(q_h, q_pos),
                                             self.encoder.attend)
    out['mlm_query_labels'], out['mlm_query_weights'] = q_labels, q_w
    out['mlm_title_logits'] = self.mlm_title(heads.gather_positions(i_h, t_pos),
                                             self.encoder.attend)
    out['mlm_title_labels'], out['mlm_title_weights'] = t_labels, t_w
    out['mpm_log_probs'] = self.mpm(heads.gather_positions(i_h, p_pos + lt))
    target_feats = heads.gather_positions(self._mpm_features(batch), p_pos)
    out['mpm_targets'] = masking.soft_targets(target_feats, self.mpm_codebook(),
                                              c.mpm_temperature)
    out['mpm_weights'] = p_w

    # QIC.
    out['qic_query'] = self.qic(heads.pool(q_h, q_mask, c.pooling))
    out['qic_item'] = self.qic(heads.pool(i_h, i_mask, c.pooling))
    if 'neg_title_tokens' in batch:
      # Judged-irrelevant items of each row's query [B * H] (mmret/jobs/pretrain/data.py):
      # unmasked, through the same item tower, into the QIC space only.
      neg = {k[len('neg_'):]: v for k, v in batch.items() if k.startswith('neg_')}
      n_patches, n_valid = self._patches(neg)
      n_h, n_mask = self._item_tower(neg, neg['title_tokens'], n_patches, n_valid, train)
      out['qic_negatives'] = self.qic(heads.pool(n_h, n_mask, c.pooling))

    # QIM / QIM2 against the hardest in-batch negative under QIC similarity.
    pos_mask = negatives.positive_mask(batch['item_index'], batch.get('query_index'))
    neg = negatives.hardest_negative(out['qic_query'] @ out['qic_item'].T, pos_mask)
    out['qim_negative'] = neg
    out['qim_weights'] = negatives.has_negative(pos_mask).astype(jnp.float32)
    b = q_tokens.shape[0]
    labels = jnp.broadcast_to(jnp.asarray([1.0, 0.0], jnp.float32), (b, 2))
    out['qim_logits'] = self._match(q_h, q_mask, i_h, i_mask, neg, train)
    out['qim_labels'] = labels
    i2_h, i2_mask = self._item_tower(batch, t_tokens, patches, patch_valid, train,
                                     with_title=False)
    out['qim2_logits'] = self._match(q_h, q_mask, i2_h, i2_mask, neg, train)
    out['qim2_labels'] = labels
    return out

  def _match(self, q_h, q_mask, i_h, i_mask, neg, train):
    """Logits [B, 2]: (query, own item) and (query, item[neg]); one cross pass over 2B pairs."""
    b = q_h.shape[0]
    cls = self.cross(jnp.concatenate([q_h, q_h]), jnp.concatenate([q_mask, q_mask]),
                     jnp.concatenate([i_h, i_h[neg]]), jnp.concatenate([i_mask, i_mask[neg]]),
                     train=train)
    logits = self.qim(cls)
    return jnp.stack([logits[:b], logits[b:]], axis=-1)


def set_codebook(variables, codebook):
  """Returns `variables` with the MPM codebook [C, F] replaced (shape-checked)."""
  variables = dict(variables)
  constants = jax.tree.map(lambda x: x, dict(variables['constants']))
  old = constants['mpm_codebook']['codebook']
  codebook = jnp.asarray(codebook, jnp.float32)
  if codebook.shape != old.shape:
    raise ValueError(f'MPM codebook shape {codebook.shape} != model codebook {old.shape} '
                     '(model.mpm_classes x MPM feature dim).')
  constants['mpm_codebook'] = {'codebook': codebook}
  variables['constants'] = constants
  return variables
