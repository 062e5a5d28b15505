"""Length bucketing of a token batch: each group of token fields cut, for the whole batch, to
the shortest multiple of `multiple` that holds its longest row (config.data.length_multiple).

Token rows are left-aligned (features.Batcher: real tokens first, padding after), so the cut
only drops columns that are padding in every row: masked attention, masked mean pooling and the
packing of segments (mmret/towers/packing.py, positions per segment) give the same outputs on
the cut batch (tests/test_length_buckets.py). What changes is the shape, so each bucket is its
own compiled step: with lengths capped at L and multiple m, at most ceil(L / m) of them per
group. Random draws shaped like the tokens (MLM masking, dropout) are drawn over the cut shape.

SynthShop `small` with the trained WordPiece (`base`): the longest title of a batch of 256 is
15-17 of 32 slots, the longest query 6-7 of 12, so multiple 4 cuts them to 16 or 20 and 8.

  batch = length_buckets.cut(batch, multiple=4)                  # {'title_tokens': [B, 20], ...}
  batch = length_buckets.cut(batch, multiple=4, agree=max_over_processes)
"""

from collections.abc import Callable

import numpy as np

# Token fields cut together: a group's fields share their length axis (axis 1).
GROUPS = {
    'query': ('query_tokens', 'query_mask'),
    'title': ('title_tokens', 'title_mask', 'neg_title_tokens', 'neg_title_mask'),
}


def bucket(longest: int, multiple: int, full: int) -> int:
  """The shortest multiple of `multiple` >= longest (at least one), capped at `full`."""
  return min(full, max(multiple, -(-longest // multiple) * multiple))


def cut(batch: dict[str, np.ndarray], multiple: int,
        agree: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """`batch` with each GROUPS group cut to its bucket; multiple <= 0: `batch` unchanged.

  agree: maps this process's longest lengths, int64 [len(GROUPS)], to the lengths every
  process uses (their maximum), so that processes reading their own rows cut alike.
  Raises ValueError naming the field when a mask has a real token after a padding slot.
  """
  if multiple <= 0:
    return batch
  groups = {name: [f for f in fields if f in batch] for name, fields in GROUPS.items()}
  groups = {name: fields for name, fields in groups.items() if fields}
  longest = np.array([max(_longest(batch, f) for f in fields if f.endswith('_mask'))
                      for fields in groups.values()], np.int64)
  if agree is not None:
    longest = np.asarray(agree(longest), np.int64)
  out = dict(batch)
  for (name, fields), length in zip(groups.items(), longest.tolist()):
    full = batch[fields[0]].shape[1]
    keep = bucket(length, multiple, full)
    for f in fields:
      out[f] = batch[f][:, :keep]
  return out


def _longest(batch: dict[str, np.ndarray], field: str) -> int:
  """Real tokens of the longest row of the mask `field`; checks the rows are left-aligned."""
  mask = np.asarray(batch[field], bool)
  lengths = mask.sum(axis=1)
  if mask.size and not (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all():
    raise ValueError(f'length bucketing: {field} has a real token after padding (rows must be '
                     'left-aligned)')
  return int(lengths.max(initial=0))
