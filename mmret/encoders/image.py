"""Image -> a sequence of patch tokens for the single-stream item tower (FashionBERT-style).

The image is cut into a grid of non-overlapping patches and each patch is embedded on its own,
as in the source (a ResNet per patch), so every patch token carries only its own pixels:

  image uint8 [B, H, W, 3] -> normalise -> patches [B, P, s, s, 3] -> embed -> [B, P, D]

Modes (`ImageConfig.mode`):
  'resnet'   a small ResNet (stem conv + residual blocks, GroupNorm, no BatchNorm so that no
             batch statistics are needed) applied to each patch, global average pooled, linear.
  'linear'   flatten each patch, one linear layer (ViT patch embedding; the cheap option).
  'features' precomputed patch features [B, P, F] (batch['patch_features']) -> linear to D.

P = (H / s) * (W / s); with the default s = 8 a 32x32 image gives 16 patches.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmret.ops import logical

# ImageNet channel statistics; any fixed affine map works, these keep inputs near unit scale.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_INIT = nn.initializers.normal(stddev=0.02)
MODES = ('resnet', 'linear', 'features')


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """mode: one of MODES. patch_size: patch side s in pixels. width: D (the encoder width).
  resnet_channels / resnet_blocks: the per-patch ResNet. groups: GroupNorm groups.
  dtype: compute dtype name."""
  mode: str = 'resnet'
  patch_size: int = 8
  width: int = 384
  resnet_channels: int = 32
  resnet_blocks: int = 2
  groups: int = 8
  dtype: str = 'float32'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'image encoder mode {self.mode!r}: choose from {MODES}.')


def normalize_image(image: jax.Array) -> jax.Array:
  """uint8 [..., H, W, 3] -> float32 with per-channel ImageNet mean/std normalisation."""
  x = image.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(_MEAN)) / jnp.asarray(_STD)


def patchify(x: Any, patch_size: int) -> Any:
  """[B, H, W, C] -> [B, P, s, s, C], patches in row-major grid order (numpy or jax arrays)."""
  b, h, w, c = x.shape
  s = patch_size
  if h % s or w % s:
    raise ValueError(f'image size {h}x{w} is not a multiple of patch_size={s}.')
  x = x.reshape(b, h // s, s, w // s, s, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // s) * (w // s), s, s, c)


def num_patches(image_size: int, patch_size: int) -> int:
  return (image_size // patch_size) ** 2


class _ResidualBlock(nn.Module):
  """Pre-activation residual block: x + conv(relu(gn(conv(relu(gn(x)))))). [N, s, s, C]."""
  channels: int
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    def norm(name):
      return nn.GroupNorm(num_groups=self.groups, dtype=self.dtype, name=name,
                          scale_init=logical(nn.initializers.ones, ('patch',)),
                          bias_init=logical(nn.initializers.zeros, ('patch',)))

    def conv(name, init):
      return nn.Conv(self.channels, (3, 3), dtype=self.dtype, name=name,
                     kernel_init=logical(init, (None, None, None, 'patch')),
                     bias_init=logical(nn.initializers.zeros, ('patch',)))

    h = conv('conv1', nn.initializers.he_normal())(nn.relu(norm('norm1')(x)))
    # Zero-initialised last conv: every block starts as the identity (stable deep start).
    h = conv('conv2', nn.initializers.zeros)(nn.relu(norm('norm2')(h)))
    return x + h


class PatchResNet(nn.Module):
  """patches float [N, s, s, 3] -> [N, channels] (stem conv, residual blocks, GN, avg pool)."""
  cfg: ImageConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    x = nn.Conv(cfg.resnet_channels, (3, 3), dtype=dtype, name='stem',
                kernel_init=logical(nn.initializers.he_normal(), (None, None, None, 'patch')),
                bias_init=logical(nn.initializers.zeros, ('patch',)))(x.astype(dtype))
    for i in range(cfg.resnet_blocks):
      x = _ResidualBlock(cfg.resnet_channels, cfg.groups, dtype, name=f'block_{i}')(x)
    x = nn.GroupNorm(num_groups=cfg.groups, dtype=dtype, name='norm_out',
                     scale_init=logical(nn.initializers.ones, ('patch',)),
                     bias_init=logical(nn.initializers.zeros, ('patch',)))(x)
    return jnp.mean(nn.relu(x), axis=(1, 2))


class PatchEncoder(nn.Module):
  """Patch tokens for the item tower.

  __call__(image uint8 [B, H, W, 3] | None, patch_features float [B, P, F] | None)
    -> patch embeddings [B, P, D] (compute dtype). 'features' mode reads patch_features,
    the other modes read image.
  """
  cfg: ImageConfig

  @nn.compact
  def __call__(self, image=None, patch_features=None):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    if cfg.mode == 'features':
      if patch_features is None:
        raise ValueError("image encoder mode 'features' needs batch['patch_features'] [B, P, F].")
      x = patch_features.astype(dtype)
    else:
      if image is None:
        raise ValueError(f"image encoder mode {cfg.mode!r} needs batch['image'] uint8 [B,H,W,3].")
      patches = patchify(normalize_image(image), cfg.patch_size)  # [B, P, s, s, 3]
      b, p = patches.shape[:2]
      if cfg.mode == 'linear':
        x = patches.reshape(b, p, -1).astype(dtype)
      else:
        x = PatchResNet(cfg, name='resnet')(patches.reshape((b * p,) + patches.shape[2:]))
        x = x.reshape(b, p, -1)
    x = nn.Dense(cfg.width, dtype=dtype, name='project',
                 kernel_init=logical(_INIT, ('patch', 'embed')),
                 bias_init=logical(nn.initializers.zeros, ('embed',)))(x)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
