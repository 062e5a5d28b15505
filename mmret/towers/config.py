"""Model config of the stage-1 pre-training model (`config.model`) and its typed views.

`model_config(variant)` returns the ConfigDict that `configs/pretrain.py` places under `model`:
  'tiny'     tests: width 32, 2 shared layers, 1 cross-modal layer, random init.
  'default'  CPU demo: the all-MiniLM-L6-v2 shape (384 wide, 6 layers, 12 heads, MLP 1536),
             initialised from MiniLM, 1 cross-modal layer.
  'base'     BERT-base shape (768 / 12 layers / 12 heads / 3072), 2 cross-modal layers.

`vocab_size` and `mask_token_id` must match the tokenizer: the trainer overwrites them from the
tokenizer it builds (MiniLM's vocabulary has 30522 ids and [MASK] = 103).
"""

import ml_collections

from mmret.encoders.image import ImageConfig
from mmret.encoders.transformer import TransformerConfig

VARIANTS = ('tiny', 'default', 'base')


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `model` section for one of VARIANTS."""
  if variant not in VARIANTS:
    raise ValueError(f'model variant {variant!r}: choose from {VARIANTS}.')
  tiny, base = variant == 'tiny', variant == 'base'
  c = ml_collections.ConfigDict()
  # 'minilm': copy all-MiniLM-L6-v2 into the shared encoder (needs the MiniLM shape and
  # vocabulary); 'random': BERT-style random init.
  c.text_init = 'random' if tiny else ('minilm' if variant == 'default' else 'random')
  c.vocab_size = 2000 if tiny else 30522
  c.mask_token_id = 4 if tiny else 103
  # Embedding / MLM-output rows are vocab_size rounded up to this multiple, so that a `model`
  # mesh axis of any size dividing it can shard them (the extra rows are never looked up).
  c.vocab_pad_multiple = 128

  # Shared (query + item tower) encoder.
  c.width = 32 if tiny else (768 if base else 384)
  c.depth = 2 if tiny else (12 if base else 6)
  c.heads = 4 if tiny else 12
  c.mlp_dim = 64 if tiny else (3072 if base else 1536)
  c.max_len = 64 if tiny else 512
  c.dropout = 0.1
  c.dtype = 'bfloat16' if base else 'float32'  # compute dtype; params are always float32
  c.remat = base
  c.scan = False
  # Cross-modal encoder (same width / heads / MLP as the shared encoder, its own weights).
  c.cross_depth = 2 if base else 1

  # Image patch tokens.
  c.image_encoder = 'linear' if tiny else 'resnet'  # 'resnet' | 'linear' | 'features'
  c.patch_size = 8
  c.resnet_channels = 8 if tiny else 32
  c.resnet_blocks = 1 if tiny else 2
  c.resnet_groups = 4 if tiny else 8
  c.patch_feature_dim = 0  # F of batch['patch_features'] ('features' mode only)

  # Retrieval vectors.
  c.pooling = 'mean'       # 'mean' (source's choice) | 'cls'
  c.normalize = True       # L2-normalise query_vec / item_vec ('encoder' space; 'qic' always is)
  # 'encoder': the pooled encoder output (D-dim) is the retrieval vector, as the source extracts
  # it; 'qic': its 256-d QIC projection, the space the in-batch contrastive loss trains.
  c.retrieval_space = 'encoder'

  c.qic_dim = 16 if tiny else 256

  # Pre-training tasks.
  c.mlm_prob = 0.15
  # Gathered MLM positions per sequence: about 15% of the typical length, plus one.
  c.mlm_max_predictions_query = 3 if variant == 'default' else 4
  c.mlm_max_predictions_title = 5 if variant == 'default' else 8
  c.mpm_prob = 0.25
  c.mpm_max_predictions = 8
  c.mpm_classes = 8 if tiny else 64
  c.mpm_grid = 2            # colour feature: grid x grid cells x RGB per patch
  c.mpm_temperature = 0.05  # of the soft assignment to the codebook (squared distances)
  return c


def transformer_config(model: ml_collections.ConfigDict, cross: bool = False) -> TransformerConfig:
  """Typed view of the shared encoder (or, with cross=True, the cross-modal encoder)."""
  return TransformerConfig(
      width=model.width, depth=model.cross_depth if cross else model.depth, heads=model.heads,
      mlp_dim=model.mlp_dim, dropout=model.dropout, dtype=model.dtype, remat=model.remat,
      scan=model.scan, vocab_size=padded_vocab_size(model), max_len=model.max_len)


def padded_vocab_size(model: ml_collections.ConfigDict) -> int:
  """Rows of the word-embedding table: vocab_size rounded up to model.vocab_pad_multiple."""
  m = model.vocab_pad_multiple
  return -(-model.vocab_size // m) * m


def image_config(model: ml_collections.ConfigDict) -> ImageConfig:
  return ImageConfig(mode=model.image_encoder, patch_size=model.patch_size, width=model.width,
                     resnet_channels=model.resnet_channels, resnet_blocks=model.resnet_blocks,
                     groups=model.resnet_groups, dtype=model.dtype)


def mpm_feature_dim(model: ml_collections.ConfigDict) -> int:
  """F of the MPM target features (and of the codebook [C, F])."""
  if model.image_encoder == 'features':
    if model.patch_feature_dim <= 0:
      raise ValueError("model.image_encoder='features' needs model.patch_feature_dim > 0.")
    return model.patch_feature_dim
  return model.mpm_grid * model.mpm_grid * 3
