"""From `config.data` to everything a job reads: the dataset, its TFDS splits, the tokenizer, the
eval set. One function, `prepare`, shared by every job.

  data = prepare(config.data)
  data.builder        # TFDS builder over array_record splits (items, train, eval, queries, ...)
  data.tokenizer      # WordPiece (mmret.data.tokenizer.Tokenizer)
  data.eval_set       # eval-day queries and targets (mmret.data.evalset.EvalSet)

Everything expensive is cached under `config.data.cache_dir` and keyed by content: the generated
SynthShop directory (by its config hash), the TFDS files (by the input files and settings) and a
trained tokenizer (by its corpus).
"""

import dataclasses
import pathlib
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmret.config import ConfigError
from mmret.data import evalset
from mmret.data import records
from mmret.data import synthshop
from mmret.data import tfds_builder
from mmret.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class PreparedData:
  """A dataset ready for training and evaluation (see the module docstring)."""
  source_dir: pathlib.Path
  dataset: records.Dataset
  builder: tfds.core.DatasetBuilder
  tokenizer: tokenizer_lib.Tokenizer
  eval_set: evalset.EvalSet

  @property
  def num_items(self) -> int:
    return len(self.dataset.items)

  def summary(self) -> str:
    """One line: sizes of the catalog, the logs and the eval set."""
    splits = self.builder.info.splits
    n_train = splits['train'].num_examples if 'train' in splits else 0
    n_eval = splits['eval'].num_examples if 'eval' in splits else 0
    images = sum(it.image is not None for it in self.dataset.items)
    image_only = sum(t.size > 0 for t in self.eval_set.image_only_targets)
    return (f'{self.num_items:,} items ({images:,} with images), {n_train:,} train and '
            f'{n_eval:,} eval interactions, {len(self.eval_set.queries):,} eval queries '
            f'({image_only:,} with image-only targets), vocabulary '
            f'{self.tokenizer.vocab_size:,}; from {self.source_dir}')

  def require_eval_queries(self) -> None:
    """Raises ConfigError (before any training) when the data has nothing to evaluate on."""
    if not self.eval_set.queries:
      raise ConfigError(
          f'config key data.source={str(self.source_dir)!r}: no eval query with a clicked or '
          'bought item, so there is nothing to evaluate; give interactions a `day` (the last '
          'day is evaluated) or a `split` of "eval" (docs/DATA.md, split rule).')

  def require_train_positives(self) -> None:
    """Raises DataError (before any training) when no train interaction is a positive (or an
    engaged impression): every job learns from those, and would fail late or learn nothing."""
    cols = self.dataset.columns()
    train = ~cols.is_eval
    if not (train & cols.positive).any() and not any(
        self.dataset.interactions[row].engaged for row in np.flatnonzero(train).tolist()):
      n_train = int(train.sum())
      raise records.DataError(
          self.dataset.root / records.INTERACTIONS_FILE, 0, None,
          f'none of the {n_train:,} train interactions is a positive (click, purchase or '
          'engaged true, or no label at all), so there is nothing to train on; label the '
          'clicks, or check the split rule (docs/DATA.md)')

  def item_log_q(self) -> np.ndarray:
    """float32 [N]: log of each item's share of the train positives (add-one smoothed).

    The probability with which the pair pipeline (uniform over positive interactions) puts an
    item into a batch: the q of the logQ correction.
    """
    cols = self.dataset.columns()
    counts = 1.0 + np.bincount(cols.item[~cols.is_eval & cols.positive],
                               minlength=self.num_items)
    return np.log(counts / counts.sum()).astype(np.float32)

  def sample_images(self, seed: int, count: int = 2048) -> np.ndarray:
    """uint8 [n, S, S, 3]: up to `count` catalog images drawn without replacement by seed."""
    source = self.builder.as_data_source(split='items')
    with_image = np.array([i for i, it in enumerate(self.dataset.items) if it.image is not None])
    if not with_image.size:
      raise ValueError(f'{self.source_dir}: no item has an image, so there is nothing to fit the '
                       'masked-patch codebook on; set the mpm loss weight to 0.')
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(with_image, size=min(count, with_image.size), replace=False))
    return np.stack([np.asarray(source[int(i)]['image']) for i in picked])


def synthshop_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The generator config: defaults of `data.synthshop_size` plus the fields edited by the user.

  `data.synthshop` is built from the size given when the config file ran; a field whose value
  differs from that size's default was set by the user and is kept, whatever the size now is.
  """
  built = data.synthshop
  base = synthshop.default_config(built.size)
  out = synthshop.default_config(data.synthshop_size)

  def merge(edited, default, target, prefix=''):
    for key, value in edited.items():
      if key == 'size':
        continue
      if key not in default:
        raise KeyError(f'config key data.synthshop.{prefix}{key} is not a SynthShop option.')
      if isinstance(value, ml_collections.ConfigDict):
        merge(value, default[key], target[key], f'{prefix}{key}.')
      elif value != default[key]:
        target[key] = value

  out.images.size = data.image_size  # render at the size the model reads, unless edited
  merge(built, base, out)
  return out


def source_directory(data: ml_collections.ConfigDict) -> pathlib.Path:
  """The BYOD directory to read: generated SynthShop (cached) or the user's own."""
  if data.source != 'synthshop':
    return pathlib.Path(data.source).expanduser()
  # The world is fixed by data.synthshop.seed, not by the training seed: runs with different
  # training seeds see the same data.
  return synthshop.load_or_generate(synthshop_config(data), pathlib.Path(data.cache_dir).expanduser())


def tokenizer_corpus(dataset: records.Dataset) -> list[str]:
  """Texts a trained WordPiece sees: catalog titles and descriptions, and the train queries."""
  texts = [it.title for it in dataset.items] + [it.description for it in dataset.items
                                                if it.description]
  cols = dataset.columns()
  train = np.unique(cols.query[~cols.is_eval])
  return texts + sorted(cols.queries[q] for q in train.tolist())


def _parse_labels(labels: Any) -> dict[str, float]:
  """'Exact=3,Substitute=2' (the command-line form) or a mapping -> {label: grade}."""
  if isinstance(labels, str):
    pairs = [p.split('=', 1) for p in labels.split(',') if p.strip()]
    if any(len(p) != 2 for p in pairs):
      raise ValueError('write labels as "Label=grade,Label=grade"')
    labels = {k.strip(): v.strip() for k, v in pairs}
  out = {}
  for label, grade in dict(labels).items():
    value = float(grade)
    if not np.isfinite(value) or value < 0:
      raise ValueError(f'the grade of label {label!r} must be a finite number >= 0')
    out[str(label)] = value
  return out


def relevance_scale(data: ml_collections.ConfigDict) -> records.RelevanceScale:
  """`data.relevance` (labels, threshold; both optional) -> records.RelevanceScale.

  labels: '' (numeric grades only), 'Exact=3,Substitute=2,Complement=1,Irrelevant=0', or a
  mapping label -> grade. threshold: the grade from which a judged pair is relevant.
  """
  section = data.get('relevance') or {}
  threshold = section.get('threshold', records.DEFAULT_RELEVANT_THRESHOLD)
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
      or not np.isfinite(threshold):
    raise ConfigError(f'config key data.relevance.threshold={threshold!r}: must be a finite '
                      'number (the grade from which a judged pair is relevant).')
  try:
    labels = _parse_labels(section.get('labels', ''))
  except ValueError as e:
    raise ConfigError(f'config key data.relevance.labels={section.get("labels")!r}: {e} '
                      '(e.g. "Exact=3,Substitute=2,Complement=1,Irrelevant=0").') from e
  return records.RelevanceScale(labels=tuple(labels.items()), threshold=float(threshold))


def prepare(data: ml_collections.ConfigDict, **builder_kwargs: Any) -> PreparedData:
  """Loads (or generates) the data of `config.data` and builds what a job needs from it."""
  tfds.disable_progress_bar()  # one bar per split and shard drowns the job's own log
  scale = relevance_scale(data)
  source_dir = source_directory(data)
  dataset = records.load_dataset(source_dir, check_images=True, relevance=scale)
  cache = pathlib.Path(data.cache_dir).expanduser()
  builder = tfds_builder.prepare(source_dir, cache / 'tfds', image_size=data.image_size,
                                 relevance=scale, dataset=dataset, **builder_kwargs)
  tokenizer = tokenizer_lib.build_tokenizer(data.tokenizer, tokenizer_corpus(dataset),
                                            data.vocab_size, cache)
  return PreparedData(source_dir=source_dir, dataset=dataset, builder=builder,
                      tokenizer=tokenizer, eval_set=evalset.build_eval_set(dataset))
