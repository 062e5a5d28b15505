"""Typed views of the stage-1 model's `config.model` (configs/pretrain.py) and its choices.

The vocabulary size comes from the tokenizer, never from the config: it is passed to
`transformer_config` by the model (MiniLM's vocabulary has 30522 ids and [MASK] = 103).
"""

import ml_collections

from mmret.encoders.image import ImageConfig
from mmret.encoders.transformer import TransformerConfig
from mmret.ops import padded_size

RETRIEVAL_SPACES = ('encoder', 'qic')  # config.model.retrieval_space
TEXT_INITS = ('minilm', 'random')       # config.model.text_init


def transformer_config(model: ml_collections.ConfigDict, vocab_size: int, cross: bool = False
                       ) -> TransformerConfig:
  """Typed view of the shared encoder (or, with cross=True, the cross-modal encoder).
  vocab_size: the tokenizer's (from the data, not the config), padded here."""
  return TransformerConfig(
      width=model.width, depth=model.cross_depth if cross else model.depth, heads=model.heads,
      mlp_dim=model.mlp_dim, dropout=model.dropout,
      attention_dropout=model.get('attention_dropout'), dtype=model.dtype,
      attention=model.attention, remat=model.remat, remat_policy=model.remat_policy,
      scan=model.scan, vocab_size=padded_size(vocab_size, model.vocab_pad_multiple),
      max_len=model.max_len)


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
