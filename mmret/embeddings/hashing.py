"""Stable ID -> embedding-table row, with hashed buckets for IDs unseen in training.

Row layout of a table built from a vocabulary of V known IDs and `num_buckets` buckets:

  [0, V)                 the known IDs, in vocabulary order
  V                      the reserved out-of-vocabulary (OOV) row: a missing ID (None / '')
                         and, with num_buckets == 0, every unseen ID
  [V + 1, V + 1 + nb)    unseen IDs, hashed: row = V + 1 + blake2b(salt + id) mod nb

The hash is blake2b from hashlib, not Python's `hash()`, which is salted per process
(PYTHONHASHSEED): the same ID must land in the same row in every run, on every host, and in
the job that serves the model.
"""

from collections.abc import Iterable, Sequence
import hashlib

import numpy as np


def stable_hash(key: str, num_buckets: int, salt: str = '') -> int:
  """An integer in [0, num_buckets), the same in every process and run."""
  if num_buckets <= 0:
    raise ValueError(f'num_buckets must be positive, got {num_buckets}.')
  digest = hashlib.blake2b(f'{salt}{key}'.encode('utf-8'), digest_size=8).digest()
  return int.from_bytes(digest, 'little') % num_buckets


class IdVocabulary:
  """Known IDs -> their rows; unseen IDs -> hashed bucket rows; missing IDs -> the OOV row."""

  def __init__(self, known: Sequence[str], num_buckets: int, salt: str = ''):
    if num_buckets < 0:
      raise ValueError(f'num_buckets must be >= 0, got {num_buckets}.')
    self._index = {}
    for key in known:
      self._index.setdefault(str(key), len(self._index))
    self.num_buckets = int(num_buckets)
    self.salt = salt

  @property
  def known(self) -> list[str]:
    """The known IDs in row order (what rebuilds this vocabulary: IdVocabulary(known, ...))."""
    return list(self._index)

  @property
  def num_known(self) -> int:
    return len(self._index)

  @property
  def oov_row(self) -> int:
    return self.num_known

  @property
  def num_rows(self) -> int:
    """Rows a table needs: known IDs + the OOV row + the buckets."""
    return self.num_known + 1 + self.num_buckets

  def __contains__(self, key: str) -> bool:
    return key in self._index

  def row(self, key: str | None) -> int:
    if key is None or key == '':
      return self.oov_row
    key = str(key)
    known = self._index.get(key)
    if known is not None:
      return known
    return self.unseen_row(key)

  def unseen_row(self, key: str | None) -> int:
    """The row `key` would have if it were not in the vocabulary (its hashed bucket, or the
    OOV row): what a cold ID looks up. Recall's cold-start dropout presents known items so."""
    if key is None or key == '' or not self.num_buckets:
      return self.oov_row
    return self.num_known + 1 + stable_hash(str(key), self.num_buckets, self.salt)

  def rows(self, keys: Iterable[str | None]) -> np.ndarray:
    """int32 [n] rows of `keys`."""
    return np.fromiter((self.row(k) for k in keys), dtype=np.int32)

  def unseen_rows(self, keys: Iterable[str | None]) -> np.ndarray:
    """int32 [n] `unseen_row` of `keys`."""
    return np.fromiter((self.unseen_row(k) for k in keys), dtype=np.int32)
