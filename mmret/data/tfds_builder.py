"""BYOD directory -> TFDS array_record splits, written and read without TensorFlow.

`prepare(data_dir, out_dir, image_size=...)` validates the directory (records.load_dataset),
writes the splits below and returns a read-only builder; read them back with
`builder.as_data_source(split)` (random access, what Grain consumes). Images are stored as uint8
tensors (TFDS's Image feature needs TensorFlow); text as UTF-8 `Text` (read back as bytes).

Splits (empty ones are not written: TFDS cannot store an empty split):
  items        catalog order; item_index int32, item_id/title/description/category Text,
               image uint8 [S, S, 3] (RGB, resized to image_size; zeros when absent),
               has_image bool, context float32 [C] (0 where missing), context_present bool [C]
  train, eval  interactions in file order; query Text, query_index int32 (into `queries`, -1
               for a query unseen in train), item_index int32, page_id Text, page_index int32,
               position int32 (-1 absent), click/purchase/engaged float32 + *_present bool,
               positive bool (records.Dataset.positive), relevance float32 (the judged
               grade, labels mapped by records.RelevanceScale; -1 absent),
               day int32 (-1 absent)
  queries      the query vocabulary: distinct train queries, sorted; query_index, query,
               train_count int32
  train_pages  train pages with a positive: page_index, query_index, query, positives int32 [3]
               (item indices, top positions first), positive_mask bool [3]

TFDS keeps one feature dict per dataset: it is the union of the fields above, every row holds
all of them, and a split's row leaves the other splits' fields empty ('' / 0 / length 0; the
large tensors have a variable leading dimension, so an empty image costs no bytes).

A page is a page_id, or (query, day) for interactions without one. The output lives in
out_dir/mmret_byod/<fingerprint>/<version>; the fingerprint hashes the input files' sizes and
mtimes, image_size, the context names and the relevance scale (it decides `positive`), so an
unchanged input is never rebuilt.
"""

import contextlib
import hashlib
import json
import logging
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmret.data import records
from mmret.data import tfds_writer

MAX_PAGE_POSITIVES = 3  # DESIGN.md §2: a training page holds up to 3 clicked items
_VERSION = '1.1.0'  # 1.1.0: float relevance grades
LABELS = ('click', 'purchase', 'engaged')
# The fields each kind of split fills; the others hold empty values.
FIELDS = {
    'items': ('item_index', 'item_id', 'title', 'description', 'category', 'image', 'has_image',
              'context', 'context_present'),
    'interactions': ('query', 'query_index', 'item_index', 'page_id', 'page_index', 'position',
                     'positive', 'relevance', 'day', *LABELS, *(f'{n}_present' for n in LABELS)),
    'queries': ('query', 'query_index', 'train_count'),
    'train_pages': ('page_index', 'query', 'query_index', 'positives', 'positive_mask'),
}


def _scalar(dtype) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(), dtype=dtype)


def _flag(value: bool | None) -> tuple[float, bool]:
  return (float(value), True) if value is not None else (0.0, False)


def load_image(path: str | None, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: RGB, bilinear resize (aspect ratio not kept); zeros when absent."""
  if path is None:
    return np.zeros((size, size, 3), np.uint8)
  with Image.open(path) as img:
    return np.asarray(img.convert('RGB').resize((size, size), Image.BILINEAR), np.uint8)


class ByodBuilder(tfds.core.GeneratorBasedBuilder):
  """Writes one loaded records.Dataset; the BuilderConfig name is the input fingerprint."""

  name = 'mmret_byod'
  VERSION = tfds.core.Version(_VERSION)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # TFDS looks for a checksums file next to the builder's source; resolving that path for an
    # installed package needs `importlib_resources`, which TFDS does not declare. There are no
    # downloads to check, so there is no source path to resolve.
    return None

  def __init__(self, *, dataset: records.Dataset, image_size: int,
               context_names: Sequence[str], fingerprint: str, **kwargs):
    self._dataset = dataset
    self._image_size = image_size
    self._context_names = tuple(context_names)
    config = tfds.core.BuilderConfig(name=fingerprint, description=str(dataset.root))
    super().__init__(config=config, file_format='array_record', **kwargs)

  # One line says what is converted, and where to (TFDS's own build would announce a download).
  def write(self, version_dir: pathlib.Path, max_shard_bytes: int) -> None:
    """Converts every split into `version_dir` (tfds_writer: streamed, sharded, no TF).

    Files are written to a temporary directory renamed when done: a crash leaves no
    dataset_info.json behind, so the next call rebuilds.
    """
    self._log_download_bytes()
    splits = {name: (example for _, example in gen)
              for name, gen in self._split_generators(None).items()}
    tfds_writer.write_dataset(self, splits, version_dir, max_shard_bytes)

  def _log_download_bytes(self) -> None:
    print(f'[data] converting {self._dataset.root} ({len(self._dataset.items):,} items, '
          f'{len(self._dataset.interactions):,} interactions) to TFDS in {self.data_dir}',
          flush=True)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self._image_size
    # TFDS has one feature dict per dataset, so it is the union over the splits and each split
    # fills its own fields (FIELDS). Large per-split tensors have a variable leading dimension:
    # rows of other splits store them with length 0 and so cost no bytes.
    features = {
        'item_index': _scalar(np.int32), 'item_id': tfds.features.Text(),
        'title': tfds.features.Text(), 'description': tfds.features.Text(),
        'category': tfds.features.Text(),
        'image': tfds.features.Tensor(shape=(None, s, 3), dtype=np.uint8),
        'has_image': _scalar(np.bool_),
        'context': tfds.features.Tensor(shape=(None,), dtype=np.float32),
        'context_present': tfds.features.Tensor(shape=(None,), dtype=np.bool_),
        'query': tfds.features.Text(), 'query_index': _scalar(np.int32),
        'page_id': tfds.features.Text(), 'page_index': _scalar(np.int32),
        'position': _scalar(np.int32), 'positive': _scalar(np.bool_),
        'relevance': _scalar(np.float32), 'day': _scalar(np.int32),
        'train_count': _scalar(np.int32),
        'positives': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'positive_mask': tfds.features.Tensor(shape=(None,), dtype=np.bool_),
    }
    for name in LABELS:
      features[name] = _scalar(np.float32)
      features[f'{name}_present'] = _scalar(np.bool_)
    return tfds.core.DatasetInfo(
        builder=self, description=f'mmret BYOD dataset from {self._dataset.root}',
        disable_shuffling=True,  # row order is meaningful: items split row = item index
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(
            source=str(self._dataset.root), image_size=self._image_size,
            context_names=list(self._context_names)))

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    del dl_manager  # everything is local
    cols = self._dataset.columns()
    train = ~cols.is_eval
    train_queries = sorted(cols.queries[q] for q in np.unique(cols.query[train]).tolist())
    self._query_index = {q: i for i, q in enumerate(train_queries)}
    self._page_index = cols.page.tolist()  # pages numbered by first appearance
    splits = self._dataset.splits()
    gens = {'items': self._generate_examples('items', None)}
    for name in ('train', 'eval'):
      rows = cols.split_rows(name)  # the row order positives.training_rows relies on
      if rows.size:
        gens[name] = self._generate_examples('interactions', rows.tolist())
    if train_queries:
      gens['queries'] = self._generate_examples('queries', cols)
      if (train & cols.positive).any():
        gens['train_pages'] = self._generate_examples('train_pages', splits)
    return gens

  def _generate_examples(self, kind: str, rows) -> Iterator[tuple[int, dict]]:
    fn = {'items': self._items, 'interactions': self._interactions, 'queries': self._queries,
          'train_pages': self._pages}[kind]
    empty = {k: '' if isinstance(f, tfds.features.Text) else
             np.zeros([0 if d is None else d for d in f.shape], f.np_dtype)
             for k, f in self.info.features.items()}
    for key, example in fn(rows):
      assert set(example) == set(FIELDS[kind]), (kind, set(example) ^ set(FIELDS[kind]))
      yield key, {**empty, **example}

  def _items(self, _) -> Iterator[tuple[int, dict]]:
    names = self._context_names
    for i, item in enumerate(self._dataset.items):
      values = [item.context.get(n) for n in names]
      yield i, {
          'item_index': i, 'item_id': item.item_id, 'title': item.title,
          'description': item.description, 'category': item.category or '',
          'image': load_image(item.image, self._image_size), 'has_image': item.image is not None,
          'context': np.array([0.0 if v is None else v for v in values], np.float32),
          'context_present': np.array([v is not None for v in values], np.bool_),
      }

  def _interactions(self, rows: list[int]) -> Iterator[tuple[int, dict]]:
    index = self._dataset.item_index()
    for row in rows:
      x = self._dataset.interactions[row]
      example = {
          'query': x.query, 'query_index': self._query_index.get(x.query, -1),
          'item_index': index[x.item_id], 'page_id': x.page_id or '',
          'page_index': self._page_index[row],
          'position': -1 if x.position is None else x.position,
          'positive': self._dataset.positive(x),
          'relevance': -1 if x.relevance is None else x.relevance,
          'day': -1 if x.day is None else x.day,
      }
      for name in LABELS:
        example[name], example[f'{name}_present'] = _flag(getattr(x, name))
      yield row, example

  def _queries(self, cols: records.InteractionColumns) -> Iterator[tuple[int, dict]]:
    counts = np.bincount(cols.rows(self._query_index)[~cols.is_eval],
                         minlength=len(self._query_index))
    for q, i in self._query_index.items():
      yield i, {'query': q, 'query_index': i, 'train_count': int(counts[i])}

  def _pages(self, splits: list[str]) -> Iterator[tuple[int, dict]]:
    index = self._dataset.item_index()
    pages: dict[int, list] = {}
    for row, (x, s) in enumerate(zip(self._dataset.interactions, splits)):
      if s == 'train' and self._dataset.positive(x):
        rank = (x.position if x.position is not None else 1 << 30, row)
        pages.setdefault(self._page_index[row], []).append((rank, index[x.item_id], x.query))
    for page, hits in pages.items():
      # Several clicks of the same item on a page count once; the best-placed clicks are kept.
      items = list(dict.fromkeys(i for _, i, _ in sorted(hits)))[:MAX_PAGE_POSITIVES]
      query = hits[0][2]
      positives = np.zeros(MAX_PAGE_POSITIVES, np.int32)
      positives[:len(items)] = items
      yield page, {'page_index': page, 'query': query, 'query_index': self._query_index[query],
                   'positives': positives,
                   'positive_mask': np.arange(MAX_PAGE_POSITIVES) < len(items)}


def fingerprint(data_dir: pathlib.Path, image_size: int, context_names: Sequence[str] | None,
                relevance: records.RelevanceScale | None = None) -> str:
  """Hash of the input files' names, sizes and mtimes plus the conversion settings."""
  scale = relevance or records.RelevanceScale()
  parts = {'version': _VERSION, 'image_size': image_size,
           'context_names': None if context_names is None else list(context_names),
           'relevance': [[list(x) for x in scale.labels], scale.threshold]}
  for name in (records.ITEMS_FILE, records.INTERACTIONS_FILE, records.QUERIES_FILE):
    path = data_dir / name
    if path.is_file():
      st = path.stat()
      parts[name] = [st.st_size, st.st_mtime_ns]
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
  return 'h' + digest[:16]


def prepare(data_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, image_size: int,
            context_names: Sequence[str] | None = None,
            relevance: records.RelevanceScale | None = None,
            dataset: records.Dataset | None = None,
            max_shard_bytes: int = tfds_writer.MAX_SHARD_BYTES) -> tfds.core.DatasetBuilder:
  """Converts a BYOD directory to TFDS array_record splits once; returns a read-only builder.

  Args:
    data_dir: the BYOD directory (docs/DATA.md).
    out_dir: TFDS data_dir to write into.
    image_size: S of the stored images [S, S, 3].
    context_names: the context features, in this order (default: the dataset's sorted union);
      a name no item has is stored as missing everywhere.
    relevance: how relevance grades read and which pairs are relevant (records.load_dataset).
    dataset: the directory already loaded with `relevance` (saves loading it twice).
    max_shard_bytes: a split is written in array_record shards of at most this many bytes.
  Returns:
    tfds builder; `builder.as_data_source(split)`, `builder.info.metadata['context_names']`.
  """
  data_dir = pathlib.Path(data_dir).expanduser().resolve()
  out_dir = pathlib.Path(out_dir).expanduser()
  fp = fingerprint(data_dir, image_size, context_names, relevance)
  built = out_dir / ByodBuilder.name / fp / _VERSION
  if not (built / 'dataset_info.json').is_file():
    if dataset is None:
      dataset = records.load_dataset(data_dir, check_images=True, relevance=relevance)
    names = dataset.context_names if context_names is None else tuple(context_names)
    with _without_custom_config_warning():
      builder = ByodBuilder(dataset=dataset, image_size=image_size, context_names=names,
                            fingerprint=fp, data_dir=str(out_dir))
    builder.write(built, max_shard_bytes)
  return tfds.builder_from_directory(str(built))


class _DropCustomConfig(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')


@contextlib.contextmanager
def _without_custom_config_warning():
  """TFDS warns that a BuilderConfig it does not list is "custom": here every input is (its
  name is the fingerprint), so the warning says nothing."""
  logger, drop = logging.getLogger('absl'), _DropCustomConfig()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)
