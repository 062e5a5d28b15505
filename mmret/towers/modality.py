"""Modality dropout and modality removal for the Que2Engage document tower (DESIGN.md §4).

At training time each example's output of each modality (text, image, context) is zeroed, i.e.
treated as absent, with probability delta of that modality (the source: delta_context = 0.5,
delta_image = 0, delta_text = 0.5), independently per example and per modality, so the model
cannot lean on one modality and stays usable when one is missing at inference. At evaluation
nothing is dropped at random; a modality can instead be removed for every example
(`remove=('image',)`), which is how the robustness metrics are measured.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

MODALITIES = ('text', 'image', 'context')


def keep_mask(rng: jax.Array | None, num: int, rate: float, *, train: bool) -> jax.Array:
  """bool [num]: True where the modality is kept.

  train=True draws Bernoulli(1 - rate) per example (rng required when rate > 0); train=False
  keeps everything (dropout is never applied at evaluation).
  """
  if not train or rate <= 0.0:
    return jnp.ones((num,), bool)
  if rate >= 1.0:
    return jnp.zeros((num,), bool)
  return jax.random.bernoulli(rng, 1.0 - rate, (num,))


def modality_keep(rng: jax.Array | None, num: int, rates: dict[str, float], *, train: bool,
                  remove: Sequence[str] = ()) -> dict[str, jax.Array]:
  """{modality: bool [num]} keep masks, one independent draw per modality.

  rates: delta per modality (missing = 0). remove: modalities dropped for every example.
  """
  unknown = set(remove) - set(MODALITIES)
  if unknown:
    raise ValueError(f'unknown modalities {sorted(unknown)}; choose from {MODALITIES}.')
  keys = (jax.random.split(rng, len(MODALITIES)) if rng is not None
          else [None] * len(MODALITIES))
  out = {}
  for key, name in zip(keys, MODALITIES):
    keep = keep_mask(key, num, float(rates.get(name, 0.0)), train=train)
    out[name] = keep & (name not in remove)
  return out
