"""Optimizer from config: AdamW (or Adam/SGD) with linear warm-up + cosine decay and clipping.

Fine-tuning an imported encoder: its parameters (the top-level subtrees named in `pretrained`)
get their own, small peak learning rate `optim.pretrained_lr` (BERT fine-tuning uses 1e-5..5e-5;
the 5e-4 fresh heads need would wash the pretrained weights out), while freshly initialised
heads keep `optim.lr`. Both share the warm-up and the cosine shape; the gradient is clipped
once, over all parameters.
"""

from collections.abc import Sequence

import jax
import ml_collections
import optax

PRETRAINED, NEW = 'pretrained', 'new'  # parameter-group labels

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


def _core(optim: ml_collections.ConfigDict, schedule: optax.Schedule
          ) -> optax.GradientTransformation:
  # First moments in bfloat16 ('bfloat16'; default None: the parameters' float32) halve their
  # memory on an accelerator; the second moments stay float32 (optax keeps nu in the params'
  # dtype), as do the master weights.
  mu_dtype = optim.get('mu_dtype') or None
  if optim.name == 'adamw':
    return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, mu_dtype=mu_dtype,
                       weight_decay=optim.weight_decay, mask=_decay_mask)
  if optim.name == 'adam':
    return optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, mu_dtype=mu_dtype)
  if optim.name == 'sgd':
    return optax.sgd(schedule, momentum=optim.b1)
  raise ValueError(f"config.optim.name={optim.name!r}: expected 'adamw', 'adam' or 'sgd'.")


def param_groups(params, pretrained: Sequence[str]):
  """The same tree as `params` with PRETRAINED on leaves under a top-level key in `pretrained`
  and NEW elsewhere."""
  return {key: jax.tree.map(lambda _, k=key: PRETRAINED if k in pretrained else NEW, sub)
          for key, sub in params.items()}


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int,
                   pretrained: Sequence[str] = ()) -> optax.GradientTransformation:
  """The configured optimizer; with `pretrained` (top-level parameter names of imported
  weights) and optim.pretrained_lr set, two parameter groups (module docstring)."""
  core = _core(optim, learning_rate_schedule(optim, num_steps))
  pretrained_lr = optim.get('pretrained_lr', 0.0)
  if pretrained and pretrained_lr:
    fine = ml_collections.ConfigDict(optim.to_dict())
    fine.lr = pretrained_lr
    core = optax.multi_transform(
        {PRETRAINED: _core(fine, learning_rate_schedule(fine, num_steps)), NEW: core},
        lambda params: param_groups(params, tuple(pretrained)))
  parts = []
  if optim.clip_norm:
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  parts.append(core)
  return optax.chain(*parts)
