"""Streams a TFDS builder's splits to array_record shards, without TFDS's writer.

TFDS's writer buffers a whole split in memory (its shuffler) and spills a split past 1 GB to
temporary files through `tf.io.gfile`, which needs TensorFlow, even with shuffling disabled.
This writer serialises examples to the records TFDS writes (tf_example.RowSerializer, several
times faster than TFDS's serializer), appends them to the current shard, and starts a new
shard when it reaches `max_shard_bytes`: memory is one example at a time, whatever the split's
size. The files and `dataset_info.json` follow TFDS's layout
(`{name}-{split}.array_record-00000-of-00003`), so
`tfds.builder_from_directory(dir).as_data_source(split)` reads them back.

  write_dataset(builder, splits, out_dir)   # splits: {split name: iterator of example dicts}
"""

import os
import pathlib
import shutil
from collections.abc import Iterable, Mapping

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib

from mmret.data import tf_example

MAX_SHARD_BYTES = 512 << 20  # TFDS's own writer aims at shards below 1 GiB


def _template(out_dir: pathlib.Path, dataset: str, split: str) -> naming.ShardedFileTemplate:
  return naming.ShardedFileTemplate(data_dir=out_dir, dataset_name=dataset, split=split,
                                    filetype_suffix='array_record')


def write_split(features: tfds.features.FeaturesDict, examples: Iterable[dict],
                out_dir: pathlib.Path, dataset: str, split: str,
                max_shard_bytes: int = MAX_SHARD_BYTES) -> splits_lib.SplitInfo:
  """Writes `examples` (in order) as one split of `dataset` in `out_dir`.

  Shards are filled in order, each up to `max_shard_bytes` of serialised examples (at least
  one example each); their final names carry the shard count, known only at the end, so they
  are written under temporary names and renamed.

  Returns:
    the split's SplitInfo (shard lengths, bytes, file template) for `dataset_info.json`.
  """
  if max_shard_bytes <= 0:
    raise ValueError(f'max_shard_bytes must be > 0, got {max_shard_bytes}')
  serializer = tf_example.RowSerializer(features)
  lengths: list[int] = []
  total = shard_bytes = 0
  writer = None
  tmp_paths: list[pathlib.Path] = []
  try:
    for example in examples:
      record = serializer(example)
      if writer is None or (shard_bytes + len(record) > max_shard_bytes and shard_bytes):
        if writer is not None:
          writer.close()
        tmp_paths.append(out_dir / f'.{dataset}-{split}.shard{len(tmp_paths):05d}.tmp')
        # group_size:1 is what TFDS writes: every record is randomly accessible.
        writer = array_record_module.ArrayRecordWriter(os.fspath(tmp_paths[-1]), 'group_size:1')
        lengths.append(0)
        shard_bytes = 0
      writer.write(record)
      lengths[-1] += 1
      shard_bytes += len(record)
      total += len(record)
  finally:
    if writer is not None:
      writer.close()
  if not lengths:
    raise ValueError(f'split {split!r} has no examples: TFDS cannot store an empty split')
  template = _template(out_dir, dataset, split)
  for path, final in zip(tmp_paths, template.sharded_filepaths(len(tmp_paths))):
    os.replace(path, final)
  return splits_lib.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total,
                              filename_template=template)


def write_dataset(builder: tfds.core.DatasetBuilder, splits: Mapping[str, Iterable[dict]],
                  out_dir: str | pathlib.Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
  """Writes every split of `builder` plus its metadata into `out_dir` (its version directory).

  The files go to a temporary sibling directory that is renamed to `out_dir` when everything
  is written: an interrupted run leaves no `dataset_info.json` at `out_dir`, so it is rebuilt.
  """
  out_dir = pathlib.Path(out_dir)
  tmp = out_dir.with_name(out_dir.name + '.incomplete')
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  info = builder.info
  infos = [write_split(info.features, examples, tmp, builder.name, name, max_shard_bytes)
           for name, examples in splits.items()]
  # SplitInfo carries the directory it was written in; the final directory is out_dir.
  infos = [splits_lib.SplitInfo(name=s.name, shard_lengths=s.shard_lengths,
                                num_bytes=s.num_bytes,
                                filename_template=_template(out_dir, builder.name, s.name))
           for s in infos]
  info.set_splits(splits_lib.SplitDict(infos))
  info.set_file_format('array_record')
  info.write_to_directory(tmp)
  if out_dir.exists():
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
