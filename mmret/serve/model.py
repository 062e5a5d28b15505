"""A trained model read back from its directory: queries (strings) and items (BYOD records) to
vectors, batched and jitted on the default device, exactly as the job's evaluation computed them.

    model = Model.load('workdir/pretrain_default')      # a workdir, or an exported directory
    q = model.encode_queries(['red floral dress'])       # float32 [Q, D], L2-normalised
    v = model.encode_items(records.load_dataset(d).items)  # float32 [N, D]
    model.item_vectors, model.item_ids, model.items      # the catalog the job evaluated on

Queries are tokenised as in training (the tokenizer saved with the model, `data.query_len`
tokens: longer queries are cut, [SEP] kept); items as the evaluation's catalog pass
(`data.title_len` title tokens, the image resized to `data.image_size`, the context features the
model was trained with, in its order; other context keys are ignored).
Jobs: stage 1 (`pretrain`), Que2Engage (`engage`) and recall (stage 2: `Model.load` returns a
mmret.serve.recall.RecallServeModel with the same interface; a recall workdir holds one model
per fusion variant, picked with `variant=` when there are several).
"""

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from mmret.config import ConfigError
from mmret.data import features
from mmret.data import pipelines
from mmret.data import records
from mmret.data import tfds_builder
from mmret.evaluate import vectors as vectors_lib
from mmret.jobs.recall import model_files as recall_files
from mmret.serve import catalog
from mmret.serve import recall as recall_serve
from mmret.train import model_dir
from mmret.towers.engage import EngageModel
from mmret.towers.pretrain import PretrainModel
from mmret.towers.recall import FUSIONS

SUPPORTED_JOBS = ('pretrain', 'engage', 'recall')


@dataclasses.dataclass(frozen=True)
class Towers:
  """A job's Flax module and its two encoding methods, and how its query batch is built."""
  module: Any
  query_method: Callable
  item_method: Callable
  trigram_buckets: int = 0  # > 0: the query batch also holds hashed character trigrams
  max_trigrams: int = 0


def build_towers(files: model_dir.ModelFiles) -> Towers:
  """The module of `files`' job, built from its stored config and tokenizer."""
  job, config, tok = files.info['job'], files.config, files.tokenizer
  if job == 'pretrain':
    return Towers(PretrainModel(config.model, vocab_size=tok.vocab_size,
                                mask_token_id=tok.mask_id),
                  PretrainModel.encode_query, PretrainModel.encode_item)
  if job == 'engage':
    return Towers(EngageModel(config.model, vocab_size=tok.vocab_size),
                  EngageModel.encode_query, EngageModel.encode_document,
                  trigram_buckets=config.model.trigram_buckets,
                  max_trigrams=config.data.max_trigrams)
  raise ConfigError(f'{files.directory}: a {job!r} model cannot be loaded yet (loading '
                    f'supports {", ".join(SUPPORTED_JOBS)}); use its stage-1 workdir instead.')


def recall_variant(path: pathlib.Path, variant: str | None) -> pathlib.Path:
  """A recall workdir -> the directory of its variant: `variant`, or the only one with a model
  directory; several without `variant` is a one-line ConfigError naming them."""
  # Only the fusions' directories: the stage-1 run inside (stage1/) has a model too.
  found = sorted(d.name for d in path.iterdir()
                 if d.name in FUSIONS and (d / model_dir.MODEL_DIR).is_dir())
  if variant:
    if variant not in found:
      raise ConfigError(f'{path}: no model directory for variant {variant!r} (found: '
                        f'{", ".join(found) or "none"}).')
    return path / variant
  if len(found) == 1:
    return path / found[0]
  if not found:
    raise ConfigError(f'{path}: a recall workdir without a model directory in any variant (a '
                      'run from before mmret wrote them, or unfinished); re-run the job there.')
  raise ConfigError(f'{path} is a recall workdir with {len(found)} variants '
                    f'({", ".join(found)}); pick one with variant= (--variant on the CLI).')


def check_workdir_kind(path: pathlib.Path, variant: str | None = None) -> pathlib.Path:
  """The directory to load: `path`, or a recall workdir's variant. A workdir without a model
  directory of its own that never will have one (a sweep) is named as such, instead of being
  reported as incomplete."""
  stored = path / 'config.json'
  if not stored.is_file() or (path / 'format.json').exists() or (path / model_dir.MODEL_DIR
                                                                  ).exists():
    if variant:
      raise ConfigError(f'{path}: variant={variant!r} is for a recall workdir, which this is '
                        'not; drop it.')
    return path
  config = model_dir.read_config(stored)
  if config.get('sweep') is not None and config.sweep.get('rows'):
    raise ConfigError(f'{path} is a sweep; load one of its runs, e.g. {path}/<row>/seed0.')
  if config.get('job') == 'recall':
    return recall_variant(path, variant)
  if config.get('job') not in SUPPORTED_JOBS:
    raise ConfigError(f'{path}: a {config.get("job")!r} model cannot be loaded yet (loading '
                      f'supports {", ".join(SUPPORTED_JOBS)}).')
  return path


def from_files(files: model_dir.ModelFiles, batch_size: int | None = None):
  """A loaded model directory -> Model, or RecallServeModel for a recall variant."""
  if files.info['job'] != 'recall':
    return Model(files, batch_size)
  model_dir.check(files.directory, recall_files.FILES)  # names a missing recall/ or stage1/ file
  stage1 = model_dir.load(files.directory / recall_files.STAGE1_DIR)
  return recall_serve.RecallServeModel(files, Model(stage1, batch_size))


def item_row(item: records.Item, index: int, image_size: int, context_names: Sequence[str]
             ) -> dict[str, Any]:
  """One BYOD item -> the fields of a catalog row (tfds_builder's `items` split); an image
  that cannot be read is a DataError naming the item."""
  try:
    image = tfds_builder.load_image(item.image, image_size)
  except Exception as e:  # pillow raises many types for missing or corrupt files
    raise records.DataError(item.image or '?', 0, 'image',
                            f'item {item.item_id!r}: unreadable image ({e})') from None
  values = [item.context.get(n) for n in context_names]
  return {'title': item.title, 'image': image, 'has_image': item.image is not None,
          'context': np.array([0.0 if v is None else v for v in values], np.float32),
          'context_present': np.array([v is not None for v in values], bool),
          'item_index': index}


class Model(catalog.Catalog):
  """See the module docstring. `variables` are numpy; each encode call jits once per shape."""

  def __init__(self, files: model_dir.ModelFiles, batch_size: int | None = None):
    self.files = files
    self.config = files.config
    self.job = files.info['job']
    self.tokenizer = files.tokenizer
    self.towers = build_towers(files)
    self.variables = files.variables
    self.batch_size = batch_size or int(self.config.eval.batch_size)
    module, towers = self.towers.module, self.towers
    self._query = jax.jit(lambda v, b: module.apply(v, b, method=towers.query_method))
    self._item = jax.jit(lambda v, b: module.apply(v, b, method=towers.item_method))

  @classmethod
  def load(cls, path: str | pathlib.Path, batch_size: int | None = None,
           variant: str | None = None) -> 'Model | recall_serve.RecallServeModel':
    """From a workdir of a finished run, its model/ directory, or an exported directory.
    variant: the fusion of a recall workdir with several (e.g. 'gate_add')."""
    path = check_workdir_kind(pathlib.Path(path).expanduser(), variant)
    return from_files(model_dir.load(path), batch_size)

  # --- encoding (the catalog the job evaluated on: items, item_ids, item_vectors from Catalog) -------------------------------------------------------------------------------

  def query_fields(self) -> features.QueryFields:
    """Strings -> the query batch fields, as in training (the portable tower uses it too)."""
    return features.QueryFields(self.tokenizer, int(self.config.data.query_len),
                                self.towers.trigram_buckets, self.towers.max_trigrams)

  def query_batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """query_tokens/query_mask [Q, Lq] (+ trigram_ids/trigram_mask [Q, T] for engage)."""
    return self.query_fields()(list(texts))

  def query_vectors_fn(self) -> Callable[[dict[str, Any]], jax.Array]:
    """batch -> float32 [B, D] with the variables bound (what jax.export serialises)."""
    module, method, variables = self.towers.module, self.towers.query_method, self.variables
    return lambda batch: module.apply(variables, batch, method=method)

  def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
    """Query strings -> float32 [Q, D] (queries beyond data.query_len tokens are cut)."""
    texts = [str(t) for t in texts]
    if not texts:
      return np.zeros((0, self.item_vectors.shape[1]), np.float32)
    t = self.towers
    batches = pipelines.query_batches(texts, self.tokenizer, self.batch_size,
                                      int(self.config.data.query_len),
                                      trigram_buckets=t.trigram_buckets,
                                      max_trigrams=t.max_trigrams or 16)
    return vectors_lib.extract(self._query, self.variables, batches)

  def encode_items(self, items: Sequence[records.Item] | str | pathlib.Path) -> np.ndarray:
    """BYOD items (records.Item, e.g. `records.load_dataset(dir).items`, or a BYOD directory)
    -> float32 [N, D]. An unreadable image raises DataError naming the item."""
    if isinstance(items, (str, pathlib.Path)):
      items = records.load_dataset(items, check_images=True).items
    items = list(items)
    if not items:
      return np.zeros((0, self.item_vectors.shape[1]), np.float32)
    size, names = int(self.config.data.image_size), self.files.info['context_names']
    rows = [item_row(it, i, size, names) for i, it in enumerate(items)]
    batcher = features.Batcher(features.ItemFields(self.tokenizer,
                                                   int(self.config.data.title_len)),
                               self.batch_size, pad=True)
    batches = (batcher(rows[s:s + self.batch_size])
               for s in range(0, len(rows), self.batch_size))
    return vectors_lib.extract(self._item, self.variables, batches)
