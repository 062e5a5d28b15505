"""The serving directory: a model directory plus a saved ScaNN index and the portable query
tower, and the searcher that reads it.

    export('workdir/pretrain_default', 'serve/')     # what `python -m mmret.export` does
    searcher = Searcher.load('serve/')
    hits = searcher.search(['red floral dress'], k=10)   # [Q] lists of Hit, best first

Layout of OUTDIR: the model directory's files (mmret/train/model_dir.py: format.json,
config.json, tokenizer/, variables.msgpack, items.jsonl, item_vectors.npy), index/ (ScaNN over
item_vectors.npy, mmret/serve/index.py) and query_tower.jax + query_tower.json
(mmret/serve/portable.py; not for a recall model, whose query tower hashes the string to its
ID row). A recall variant's directory also holds recall/ and stage1/
(mmret/jobs/recall/model_files.py).
"""

import dataclasses
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np

from mmret.config import ConfigError
from mmret.jobs.recall import model_files as recall_files
from mmret.train import model_dir
from mmret.serve import index as index_lib
from mmret.serve import model as model_lib
from mmret.serve import portable

INDEX_DIR = 'index'
RECALL_DIRS = (recall_files.RECALL_DIR, recall_files.STAGE1_DIR)


def export(workdir: str | pathlib.Path, outdir: str | pathlib.Path, *,
           num_neighbors: int = 100, variant: str | None = None) -> pathlib.Path:
  """Writes the serving directory of a finished run's workdir (or model directory) to outdir.

  num_neighbors: the K the ScaNN index is tuned for (larger K still works; search widens).
  variant: the fusion of a recall workdir with several variants.
  """
  path = model_lib.check_workdir_kind(pathlib.Path(workdir).expanduser(), variant)
  files = model_dir.load(path)
  model = model_lib.from_files(files)
  recall = files.info['job'] == 'recall'

  outdir = pathlib.Path(outdir).expanduser()
  outdir.mkdir(parents=True, exist_ok=True)
  if outdir.resolve() != files.directory.resolve():
    (outdir / 'format.json').unlink(missing_ok=True)  # incomplete until the copy is done
    for name in model_dir.FILES:
      if name.startswith('tokenizer/') or name == 'format.json':
        continue
      shutil.copy2(files.directory / name, outdir / name)
    shutil.copytree(files.directory / 'tokenizer', outdir / 'tokenizer', dirs_exist_ok=True)
    for name in (RECALL_DIRS if recall else ()):
      shutil.copytree(files.directory / name, outdir / name, dirs_exist_ok=True)
  index = index_lib.Index.build(model.item_vectors, model.item_ids, num_neighbors)
  if (outdir / INDEX_DIR).exists():
    shutil.rmtree(outdir / INDEX_DIR)
  index.save(outdir / INDEX_DIR)
  if not recall:  # the recall query tower hashes strings to ID rows: not exportable as StableHLO
    portable.write_query_tower(model, outdir)
  if outdir.resolve() != files.directory.resolve():
    shutil.copy2(files.directory / 'format.json', outdir / 'format.json')  # complete now
  return outdir


@dataclasses.dataclass(frozen=True)
class Hit:
  item_id: str
  title: str
  score: float
  image: str | None = None


class Searcher:
  """A model and its saved index: query strings -> top-K items."""

  def __init__(self, model: model_lib.Model, index: index_lib.Index):
    self.model, self.index = model, index
    self._titles = {it['item_id']: it for it in model.items}

  @classmethod
  def load(cls, outdir: str | pathlib.Path) -> 'Searcher':
    """A directory written by `export`; one without an index is a one-line ConfigError."""
    outdir = pathlib.Path(outdir).expanduser()
    files = model_dir.load(outdir)
    if not (files.directory / INDEX_DIR / index_lib.INDEX_FILE).is_file():
      raise ConfigError(f'{files.directory}: {INDEX_DIR}/{index_lib.INDEX_FILE} missing (no '
                        'saved index); write the serving directory with `python -m '
                        f'mmret.export WORKDIR {outdir}`.')
    return cls(model_lib.from_files(files), index_lib.Index.load(files.directory / INDEX_DIR))

  def search_vectors(self, query_vectors: np.ndarray, k: int) -> list[list[Hit]]:
    """float [Q, D] -> [Q] lists of up to k hits, best first."""
    scores, rows = self.index.search(query_vectors, k)
    out = []
    for score_row, id_row in zip(scores, rows):
      hits = []
      for score, row in zip(score_row, id_row):
        if row < 0:
          continue
        item = self._titles[self.index.item_ids[row]]
        hits.append(Hit(item['item_id'], item['title'], float(score), item.get('image')))
      out.append(hits)
    return out

  def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
    """Query strings -> [Q] lists of up to k hits (item id, title, score, image), best first."""
    return self.search_vectors(self.model.encode_queries(queries), k)
