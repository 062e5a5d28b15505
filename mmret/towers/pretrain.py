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
from mmret.towers import heads, masking, negatives, packing

_ACT = ('batch', 'length', 'embed')
# The stage-1 tasks (config.loss.weights keys).
TASKS = ('mlm_query', 'mlm_title', 'mpm', 'qic', 'qim', 'qim2')


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
  # Tasks whose outputs a training step computes (the loss's non-zero weights, see
  # mmret.jobs.pretrain.model.active_tasks); 'qic' is always computed.
  tasks: tuple[str, ...] = TASKS

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

  def _item_rows(self, title_tokens, title_valid, patches, patch_valid, with_title=True):
    """[CLS] title [SEP] patches -> the encoder's inputs (packing.Rows, mask bool [B, L]).

    title_tokens int [B, Lt], title_valid bool [B, Lt] (see `_title_valid`), patches [B, P, D],
    patch_valid bool [B, P]. Patches take positions 0..P-1 of their own (type 1 tells them from
    text), so the title's padding length never shifts them. with_title=False keeps only [CLS] +
    patches (QIM2) with the same positions and types, so the patch tokens look exactly as they
    do with the title present.
    """
    lt = title_tokens.shape[1]
    n = patches.shape[1]
    positions = jnp.concatenate([jnp.arange(lt), jnp.arange(n)])
    types = jnp.concatenate([jnp.zeros((lt,), jnp.int32), jnp.ones((n,), jnp.int32)])
    emb = self.encoder.embed_tokens(title_tokens)
    if not with_title:
      emb, title_valid = emb[:, :1], title_valid[:, :1]
      positions = jnp.concatenate([positions[:1], positions[lt:]])
      types = jnp.concatenate([types[:1], types[lt:]])
    x = jnp.concatenate([emb, patches.astype(emb.dtype)], axis=1)
    shape = x.shape[:2]
    return packing.Rows(x, jnp.broadcast_to(types, shape), jnp.broadcast_to(positions, shape),
                        jnp.concatenate([title_valid, patch_valid], axis=1))

  def _encode(self, rows: packing.Rows, train):
    return self.encoder(rows.x, rows.types, rows.mask, positions=rows.positions, train=train)

  def _item_tower(self, title_tokens, title_valid, patches, patch_valid, train, with_title=True):
    """`_item_rows` through the shared encoder -> (hidden [B, L, D], mask bool [B, L])."""
    rows = self._item_rows(title_tokens, title_valid, patches, patch_valid, with_title)
    return self._encode(rows, train), rows.mask

  @staticmethod
  def _title_valid(batch):
    """bool [B, Lt]: title tokens to attend to (none when text_present is False); [CLS] always
    valid, so an item with neither modality still gets a finite vector."""
    title_mask = jnp.asarray(batch['title_mask'])
    text_present = jnp.asarray(batch.get('text_present', jnp.ones(title_mask.shape[:1], bool)))
    return (title_mask & text_present[:, None]).at[:, 0].set(True)

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
    h, mask = self._item_tower(batch['title_tokens'], self._title_valid(batch), patches,
                               patch_valid, train=False)
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

  def _active(self, task: str) -> bool:
    """Whether `task`'s outputs are computed. init always builds every parameter, so that the
    parameter tree (checkpoints, serving, the optimizer) does not depend on the loss weights."""
    return task in self.tasks or self.is_initializing()

  def _mask_patches(self, patches, patch_valid, train):
    """(patches with [MASK] patch embeddings [B, P, D], MPM positions int [B, M],
    MPM weights [B, M])."""
    c = self.config
    if not train:
      p_pos = jnp.zeros((patches.shape[0], c.mpm_max_predictions), jnp.int32)
      return patches, p_pos, p_pos.astype(jnp.float32)
    p_pos, p_w, p_masked = masking.mask_patches(
        self.make_rng('masking'), patch_valid, prob=c.mpm_prob,
        max_predictions=c.mpm_max_predictions)
    masked = jnp.where(p_masked[..., None], self.mask_patch.astype(patches.dtype), patches)
    return masked, p_pos, p_w

  def _item_patches(self, batch, neg):
    """Patch embeddings [B, P, D] + validity [B, P] of the batch's items and, with judged
    negatives `neg`, of theirs [B*H, P, D] (one image-encoder call for both), else None."""
    if not neg:
      return self._patches(batch), None
    b = batch['title_tokens'].shape[0]
    keys = [k for k in ('image', 'patch_features', 'image_present') if k in batch]
    patches, valid = self._patches({k: jnp.concatenate([batch[k], neg[k]]) for k in keys})
    return (patches[:b], valid[:b]), (patches[b:], valid[b:])

  def _query_rows(self, q_in, q_mask, cls_tokens, patches, patch_valid, with_qim2):
    """The query pass's encoder inputs (packing.Rows), with QIM2's title-less item packed in.

    with_qim2: each row is [query (Lq) | [CLS] patches (1 + P)] with a block-diagonal pair mask
    [B, L, L], each part keeping its own positions and types, so every token sees exactly what
    it sees in the separate passes, with no padding added (model.share_calls); else the query
    alone ([B, Lq] key mask).
    """
    b, lq = q_in.shape
    if not with_qim2:
      return packing.Rows(self.encoder.embed_tokens(q_in), jnp.zeros_like(q_in),
                          jnp.broadcast_to(jnp.arange(lq), (b, lq)), q_mask)
    n = patches.shape[1]
    emb = self.encoder.embed_tokens(jnp.concatenate([q_in, cls_tokens], axis=1))
    x = jnp.concatenate([emb, patches.astype(emb.dtype)], axis=1)
    types = jnp.concatenate([jnp.zeros((lq + 1,), jnp.int32), jnp.ones((n,), jnp.int32)])
    positions = jnp.concatenate([jnp.arange(lq), jnp.arange(1), jnp.arange(n)])
    segment = jnp.arange(lq + 1 + n) >= lq
    valid = jnp.concatenate([q_mask, jnp.ones((b, 1), bool), patch_valid], axis=1)
    pairs = (segment[:, None] == segment[None, :])[None] & valid[:, None, :]  # [B, L, L]
    shape = x.shape[:2]
    return packing.Rows(x, jnp.broadcast_to(types, shape), jnp.broadcast_to(positions, shape),
                        pairs)

  def _passes(self, batch, q_in, t_in, train):
    """Every encoder pass of a step -> ({name: (hidden [R, L, D], mask [R, L])}, MPM positions
    [B, M], MPM weights [B, M]) for 'query', 'item' (masked inputs for MLM/MPM), 'qim2' ([CLS]
    + patches, the title removed; when QIM2 is active) and 'neg' (the judged negatives
    [B*H], when the batch has them).

    With model.share_calls the shared encoder runs twice whatever the tasks: query + QIM2
    packed (`_query_rows`), item + judged negatives concatenated along the batch (the same
    length). XLA then compiles two layer stacks instead of up to four. model.single_call makes
    it one call: the query rows padded to the item rows' length and concatenated with them
    (mmret/towers/packing.py).
    """
    c = self.config
    neg = {k[len('neg_'):]: v for k, v in batch.items() if k.startswith('neg_')}
    (patches, patch_valid), neg_patches = self._item_patches(batch, neg)
    masked, p_pos, p_w = self._mask_patches(patches, patch_valid, train and self._active('mpm'))
    q_mask = batch['query_mask']
    b, lq = q_in.shape
    with_qim2 = self._active('qim2')
    item = self._item_rows(t_in, self._title_valid(batch), masked, patch_valid)
    rows = {'item': item}
    if neg:
      rows['neg'] = self._item_rows(neg['title_tokens'], self._title_valid(neg), *neg_patches)
    if not c.share_calls:
      passes = {'query': (self._query_tower(q_in, q_mask, train), q_mask)}
      if with_qim2:
        passes['qim2'] = self._item_tower(batch['title_tokens'], self._title_valid(batch),
                                          patches, patch_valid, train, with_title=False)
      passes.update({name: (self._encode(r, train), r.mask) for name, r in rows.items()})
      return passes, p_pos, p_w
    query = self._query_rows(q_in, q_mask, batch['title_tokens'][:, :1], patches, patch_valid,
                             with_qim2)
    # Item and judged-negative rows have the same length: concatenated as they are.
    items = packing.Rows(*(jnp.concatenate(f) for f in zip(*rows.values())))
    if c.get('single_call', False):
      h_query, h_items = packing.split(self._encode(packing.concat([query, items]), train),
                                       [query, items])
    else:
      h_query, h_items = self._encode(query, train), self._encode(items, train)
    passes = {'query': (h_query[:, :lq], q_mask), 'item': (h_items[:b], item.mask)}
    if with_qim2:
      passes['qim2'] = (h_query[:, lq:],
                        jnp.concatenate([jnp.ones((b, 1), bool), patch_valid], axis=1))
    if neg:
      passes['neg'] = (h_items[b:], rows['neg'].mask)
    return passes, p_pos, p_w

  def __call__(self, batch, train: bool = False):
    c = self.config
    out = {}
    # Inputs masked for MLM (query, title) and MPM (patches) when those tasks are active.
    q_in, q_pos, q_labels, q_w = self._mask_text(
        batch['query_tokens'], batch['query_mask'], c.mlm_max_predictions_query,
        train and self._active('mlm_query'))
    t_in, t_pos, t_labels, t_w = self._mask_text(batch['title_tokens'], batch['title_mask'],
                                                 c.mlm_max_predictions_title,
                                                 train and self._active('mlm_title'))
    passes, p_pos, p_w = self._passes(batch, q_in, t_in, train)
    (q_h, q_mask), (i_h, i_mask) = passes['query'], passes['item']
    out['query_vec'] = self._vector(q_h, q_mask)
    out['item_vec'] = self._vector(i_h, i_mask)

    # MLM / MPM at the gathered positions only ([B, P, V] logits, never [B, L, V]).
    if self._active('mlm_query'):
      out['mlm_query_logits'] = self.mlm_query(heads.gather_positions(q_h, q_pos),
                                               self.encoder.attend)
      out['mlm_query_labels'], out['mlm_query_weights'] = q_labels, q_w
    if self._active('mlm_title'):
      out['mlm_title_logits'] = self.mlm_title(heads.gather_positions(i_h, t_pos),
                                               self.encoder.attend)
      out['mlm_title_labels'], out['mlm_title_weights'] = t_labels, t_w
    if self._active('mpm'):
      lt = batch['title_tokens'].shape[1]
      out['mpm_log_probs'] = self.mpm(heads.gather_positions(i_h, p_pos + lt))
      target_feats = heads.gather_positions(self._mpm_features(batch), p_pos)
      out['mpm_targets'] = masking.soft_targets(target_feats, self.mpm_codebook(),
                                                c.mpm_temperature)
      out['mpm_weights'] = p_w

    # QIC (always: its vectors also pick QIM's hard negatives).
    out['qic_query'] = self.qic(heads.pool(q_h, q_mask, c.pooling))
    out['qic_item'] = self.qic(heads.pool(i_h, i_mask, c.pooling))
    if 'neg' in passes:  # judged-irrelevant items of each row's query, QIC space only
      out['qic_negatives'] = self.qic(heads.pool(*passes['neg'], c.pooling))
    out.update(self._qim(batch, q_h, q_mask, passes, out, train))
    return out

  def _qim(self, batch, q_h, q_mask, passes, out, train):
    """QIM / QIM2 outputs against the hardest in-batch negative under QIC similarity."""
    matched = [name for name in ('qim', 'qim2') if self._active(name)]
    if not matched:
      return {}
    pos_mask = negatives.positive_mask(batch['item_index'], batch.get('query_index'))
    neg = negatives.hardest_negative(out['qic_query'] @ out['qic_item'].T, pos_mask)
    b = q_h.shape[0]
    res = {'qim_negative': neg,
           'qim_weights': negatives.has_negative(pos_mask).astype(jnp.float32)}
    items = {'qim': passes['item'], 'qim2': passes.get('qim2')}
    # model.share_calls: QIM and QIM2 in one cross-encoder call over 4B pairs.
    groups = [matched] if self.config.share_calls else [[name] for name in matched]
    for group in groups:
      logits = self._match(q_h, q_mask, [items[name] for name in group], neg, train)
      res.update({f'{name}_logits': x for name, x in zip(group, logits)})
    labels = jnp.broadcast_to(jnp.asarray([1.0, 0.0], jnp.float32), (b, 2))
    res.update({f'{name}_labels': labels for name in matched})
    return res

  def _match(self, q_h, q_mask, items, neg, train):
    """Logits [B, 2] per (i_h [B, L_k, D], i_mask [B, L_k]) in `items`: (query, own item) and
    (query, item[neg]); one cross pass over 2B * len(items) pairs. Shorter items are padded with
    masked slots to the longest (the cross encoder has no position embeddings, and masked keys
    are never attended to, so their values change nothing)."""
    b = q_h.shape[0]
    length = max(h.shape[1] for h, _ in items)
    pad = lambda x: jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    i_h = jnp.concatenate([pad(x) for h, _ in items for x in (h, h[neg])])
    i_mask = jnp.concatenate([pad(x) for _, m in items for x in (m, m[neg])])
    k = 2 * len(items)
    logits = self.qim(self.cross(jnp.concatenate([q_h] * k), jnp.concatenate([q_mask] * k),
                                 i_h, i_mask, train=train))
    # [own_1, neg_1, own_2, neg_2, ...] x B rows -> per item [B, 2] (column 1: the negative).
    return list(logits.reshape(len(items), 2, b).transpose(0, 2, 1))


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
