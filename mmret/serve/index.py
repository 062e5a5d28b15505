"""A ScaNN index over item vectors that is saved and loaded (scann's `serialize` /
`scann_ops_pybind.load_searcher`), with the item ids beside it.

    index = Index.build(model.item_vectors, model.item_ids)   # mmret.evaluate.search's rule
    index.save('serve/index')
    index = Index.load('serve/index')
    scores, rows = index.search(query_vectors, k=10)          # [Q, k] each; rows -1 = empty
    [index.item_ids[r] for r in rows[0] if r >= 0]

Directory: the files ScaNN writes (its assets are found relative to the directory, so it can be
moved) plus index.json: the ScaNN parameters and the item ids, in row order.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np
import scann

from mmret import files
from mmret.config import ConfigError
from mmret.evaluate import search

INDEX_FILE = 'index.json'


class _LoadedScann(search.ScannIndex):
  """search.ScannIndex around a searcher read from disk instead of one built from vectors."""

  def __init__(self, searcher, num_items: int, dim: int, params: search.ScannParams):
    # search() reads only num_items (from items' shape), params and the searcher; the vectors
    # themselves live inside the searcher, so a broadcast view (no memory) stands in for them.
    self.items = np.broadcast_to(np.zeros((1, dim), np.float32), (num_items, dim))
    self.params = params
    self._searcher = searcher


@dataclasses.dataclass
class Index:
  """ScaNN over item vectors [N, D]; `item_ids` [N] name its rows."""
  scann_index: search.ScannIndex
  item_ids: list[str]

  @classmethod
  def build(cls, item_vectors: np.ndarray, item_ids: Sequence[str], num_neighbors: int = 100
            ) -> 'Index':
    """item_vectors float [N, D]; parameters by mmret.evaluate.search.scann_params' rule."""
    if len(item_ids) != np.shape(item_vectors)[0]:
      raise ValueError(f'{len(item_ids)} ids for {np.shape(item_vectors)[0]} vectors.')
    return cls(search.build_scann(np.asarray(item_vectors, np.float32),
                                  num_neighbors=num_neighbors), list(item_ids))

  @property
  def num_items(self) -> int:
    return self.scann_index.num_items

  def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """query_vectors float [Q, D] -> (scores float32 [Q, k'], rows int32 [Q, k']), best first,
    k' = min(k, N); row -1 / score -inf pad a query that found fewer."""
    return self.scann_index.search(query_vectors, k)

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # relative_path: the assets file names them relative to the directory, so it can move.
    searcher = self.scann_index._searcher  # pylint: disable=protected-access
    searcher.serialize(str(directory), relative_path=True)
    info = {'params': dataclasses.asdict(self.scann_index.params), 'num_items': self.num_items,
            'dim': int(self.scann_index.items.shape[1]), 'item_ids': self.item_ids}
    files.write_text_atomic(directory / INDEX_FILE, json.dumps(info) + '\n')
    return directory

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'Index':
    """A saved index; a directory without one is a one-line ConfigError naming the file."""
    directory = pathlib.Path(directory)
    if not (directory / INDEX_FILE).is_file():
      raise ConfigError(f'{directory / INDEX_FILE} is missing: no saved index there; write one '
                        'with `python -m mmret.export WORKDIR OUTDIR`.')
    info = json.loads((directory / INDEX_FILE).read_text())
    try:
      searcher = scann.scann_ops_pybind.load_searcher(str(directory))
    except Exception as e:  # scann raises RuntimeError/ValueError/absl status errors
      raise ConfigError(f'{directory}: the ScaNN index cannot be loaded ({e}); export it '
                        'again.') from None
    loaded = _LoadedScann(searcher, info['num_items'], info['dim'],
                          search.ScannParams(**info['params']))
    return cls(loaded, list(info['item_ids']))
