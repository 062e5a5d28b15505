"""The context token (Que2Engage, DESIGN.md §4): numeric side features -> BatchNorm -> MLP.

Context features (price, rating, condition, any numeric column of items.jsonl) arrive as
`context float32 [N, C]` with `context_present bool [N, C]`; a missing value is stored as 0.0
with present=False (docs/DATA.md, "Missing modalities and labels").

Missing values are handled by masking, not imputation before normalisation:
  1. a signed log1p squashes heavy-tailed columns (prices span orders of magnitude);
  2. `MaskedBatchNorm` computes each column's batch mean/variance over its *present* entries
     only, and its running averages (collection `batch_stats`) are updated only from columns
     with at least one present entry, so a stored 0.0 never pollutes the statistics (and a
     column missing in the whole batch, or in the whole catalog, gives no NaN);
  3. a missing entry is then set to 0 = the column mean after normalisation, and the present
     mask is appended as C more inputs so the MLP can tell "average" from "unknown".
Training normalises with the batch statistics and updates the running ones (apply with
`mutable=['batch_stats']`); evaluation uses the running statistics and changes nothing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmret.ops import logical

_INIT = nn.initializers.normal(stddev=0.02)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over axis 0 of x [N, C] whose statistics ignore entries where mask [N, C] is False.

  Variables: params scale/bias [C]; batch_stats mean/var [C] (running averages).
  """
  momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    x = x.astype(jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    scale = self.param('scale', logical(nn.initializers.ones, ('context',)), (c,))
    bias = self.param('bias', logical(nn.initializers.zeros, ('context',)), (c,))
    if train:
      m = mask.astype(jnp.float32)
      count = jnp.sum(m, axis=0)                        # [C]
      seen = count > 0
      denom = jnp.maximum(count, 1.0)
      mean = jnp.sum(x * m, axis=0) / denom
      var = jnp.sum(jnp.square(x - mean) * m, axis=0) / denom
      # A column without a present entry in this batch keeps (and is normalised by) the
      # running statistics; `is_initializing` keeps init from moving them.
      mean = jnp.where(seen, mean, ra_mean.value)
      var = jnp.where(seen, var, ra_var.value)
      if not self.is_initializing():
        mo = self.momentum
        ra_mean.value = jnp.where(seen, mo * ra_mean.value + (1 - mo) * mean, ra_mean.value)
        ra_var.value = jnp.where(seen, mo * ra_var.value + (1 - mo) * var, ra_var.value)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * scale + bias


def signed_log1p(x: jax.Array) -> jax.Array:
  return jnp.sign(x) * jnp.log1p(jnp.abs(x))


class ContextEncoder(nn.Module):
  """context [N, C], context_present bool [N, C] -> the context token [N, D].

  width: D. hidden: MLP hidden width. log_transform: apply signed log1p before BatchNorm.
  """
  width: int
  hidden: int = 64
  log_transform: bool = True
  momentum: float = 0.99

  @nn.compact
  def __call__(self, context: jax.Array, present: jax.Array, train: bool = False) -> jax.Array:
    x = context.astype(jnp.float32)
    present = present.astype(bool)
    if self.log_transform:
      x = signed_log1p(x)
    x = MaskedBatchNorm(momentum=self.momentum, name='batch_norm')(x, present, train)
    x = jnp.where(present, x, 0.0)  # missing -> the column mean, flagged by the mask below
    x = jnp.concatenate([x, present.astype(jnp.float32)], axis=-1)   # [N, 2C]
    h = nn.Dense(self.hidden, name='mlp_in', kernel_init=logical(_INIT, ('context', 'mlp')),
                 bias_init=logical(nn.initializers.zeros, ('mlp',)))(x)
    h = nn.gelu(h)
    return nn.Dense(self.width, name='mlp_out', kernel_init=logical(_INIT, ('mlp', 'embed')),
                    bias_init=logical(nn.initializers.zeros, ('embed',)))(h)
