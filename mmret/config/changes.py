"""What differs between a stored config (a run's config.json) and a new one.

A resumed run, or a finished stage-1 run whose vectors another job reads, is only what it
claims to be if it was made with the config now asked for; `config_changes` lists the keys
that differ, up to the ones that do not change what a checkpoint means.
"""

from collections.abc import Sequence
import json

import ml_collections

# Keys a resumed run may change without changing what the checkpoint means: how long to train,
# how often to log and save, how to evaluate and report, where the data cache lives, and which
# of the recall job's fusions to run (each has its own checkpoints).
SAFE_TO_CHANGE = ('train.num_steps', 'train.log_every', 'train.checkpoint_every', 'eval.',
                  'data.cache_dir', 'log_prefix', 'sweep.', 'variants')


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def config_changes(stored: dict, config: ml_collections.ConfigDict,
                   safe: Sequence[str] = SAFE_TO_CHANGE) -> list[str]:
  """Dotted keys whose value differs between a stored config.json and `config`, except the
  safe ones (a prefix ending in '.' covers a whole section)."""
  new = flatten(json.loads(config.to_json_best_effort()))
  old = flatten(stored)
  changed = []
  for key in sorted(set(new) | set(old)):
    if any(key == s or (s.endswith('.') and key.startswith(s)) for s in safe):
      continue
    if new.get(key, '<absent>') != old.get(key, '<absent>'):
      changed.append(f'{key}: {old.get(key, "<absent>")!r} -> {new.get(key, "<absent>")!r}')
  return changed
