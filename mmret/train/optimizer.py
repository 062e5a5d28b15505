"""Optimizer from config: AdamW (or Adam/SGD) with linear warm-up + cosine decay and clipping."""

import jax
import ml_collections
import optax

NAMES = ('adamw', 'adam', 'sgd')  # config.optim.name


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to `optim.lr`, then cosine decay to `optim.lr * optim.final_lr_ratio`."""
  warmup = min(int(optim.warmup_steps), max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=optim.lr * optim.final_lr_ratio)


def _decay_mask(params):
  # Decoupled weight decay on matrices only: biases, LayerNorm scales and embeddings of size-1
  # dims are left alone (standard BERT/AdamW practice).
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim, num_steps)
  if optim.name == 'adamw':
    core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay, mask=_decay_mask)
  elif optim.name == 'adam':
    core = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  elif optim.name == 'sgd':
    core = optax.sgd(schedule, momentum=optim.b1)
  else:
    raise ValueError(f"config.optim.name={optim.name!r}: expected 'adamw', 'adam' or 'sgd'.")
  parts = []
  if optim.clip_norm:
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  parts.append(core)
  return optax.chain(*parts)
