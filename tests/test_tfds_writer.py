"""mmret.data.tfds_writer: streamed, sharded array_record splits read back like TFDS's own."""

import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.proto import tf_example_pb2

from mmret.data import records
from mmret.data import tf_example
from mmret.data import tfds_builder
from mmret.data import tfds_writer

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'
S = 4


def _rows(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('writer')
  src = root / 'src'
  shutil.copytree(FIXTURE, src)
  # TFDS's own writer (fine at this size) is the reference.
  dataset = records.load_dataset(src, check_images=True)
  fp = tfds_builder.fingerprint(src.resolve(), S, None)
  reference = tfds_builder.ByodBuilder(dataset=dataset, image_size=S,
                                       context_names=dataset.context_names, fingerprint=fp,
                                       data_dir=str(root / 'reference'))
  reference.download_and_prepare()
  ours = tfds_builder.prepare(src, root / 'ours', image_size=S, max_shard_bytes=300)
  return tfds.builder_from_directory(reference.data_dir), ours


def test_sharded_output_reads_back_like_tfds_writer(built):
  reference, ours = built
  assert set(ours.info.splits) == set(reference.info.splits)
  for split, info in reference.info.splits.items():
    assert ours.info.splits[split].num_examples == info.num_examples
    assert ours.info.splits[split].num_bytes == info.num_bytes  # same serialised records
    want, got = _rows(reference, split), _rows(ours, split)
    assert len(got) == len(want) == info.num_examples
    for a, b in zip(want, got):
      _assert_same(a, b)
  # 300-byte shards: every items row (a 4x4 image plus text) needs its own shard.
  assert ours.info.splits['items'].shard_lengths == [1] * 6
  assert ours.info.metadata['context_names'] == reference.info.metadata['context_names']


def test_shards_split_at_the_byte_limit(tmp_path):
  features = tfds.features.FeaturesDict({'x': tfds.features.Tensor(shape=(None,),
                                                                     dtype=np.int32)})
  examples = [{'x': np.arange(n, dtype=np.int32)} for n in (10, 10, 10, 100, 1)]
  sizes = [len(example_serializer.ExampleSerializer(
      features.get_serialized_info()).serialize_example(features.encode_example(e)))
           for e in examples]
  limit = sizes[0] * 2
  info = tfds_writer.write_split(features, iter(examples), tmp_path, 'd', 'train', limit)
  assert info.shard_lengths == [2, 1, 1, 1] and info.num_bytes == sum(sizes)
  files = sorted(p.name for p in tmp_path.iterdir())
  assert files == [f'd-train.array_record-{i:05d}-of-00004' for i in range(4)]


def test_empty_split_and_bad_limit_raise(tmp_path):
  features = tfds.features.FeaturesDict({'x': tfds.features.Tensor(shape=(), dtype=np.int32)})
  with pytest.raises(ValueError, match='has no examples'):
    tfds_writer.write_split(features, iter([]), tmp_path, 'd', 'train')
  with pytest.raises(ValueError, match='max_shard_bytes must be > 0'):
    tfds_writer.write_split(features, iter([{'x': 1}]), tmp_path, 'd', 'train', 0)


def test_row_serializer_parses_like_tfds_serializer():
  features = tfds.features.FeaturesDict({
      'i': tfds.features.Tensor(shape=(), dtype=np.int32),
      'b': tfds.features.Tensor(shape=(), dtype=np.bool_),
      'f': tfds.features.Tensor(shape=(), dtype=np.float32),
      'v': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'm': tfds.features.Tensor(shape=(3,), dtype=np.bool_),
      'c': tfds.features.Tensor(shape=(None,), dtype=np.float32),
      'img': tfds.features.Tensor(shape=(None, 2, 3), dtype=np.uint8),
      't': tfds.features.Text(),
  })
  reference = example_serializer.ExampleSerializer(features.get_serialized_info())
  fast = tf_example.RowSerializer(features)
  rng = np.random.default_rng(0)
  rows = [
      {'i': -1, 'b': True, 'f': 0.1, 'v': np.array([-(2**31), 2**31 - 1, 0, 127, 128, 300, -5],
                                                   np.int32),
       'm': np.array([True, False, True]), 'c': np.array([1.5, -2.25], np.float32),
       'img': rng.integers(0, 256, (4, 2, 3)).astype(np.uint8), 't': 'naïve ☃'},
      {'i': 2**31 - 1, 'b': False, 'f': -1, 'v': np.zeros(0, np.int32),
       'm': np.zeros(3, bool), 'c': np.zeros(0, np.float32),
       'img': np.zeros((0, 2, 3), np.uint8), 't': ''},
      # 0-d arrays and short vectors are cached by their bytes: -0.0 and 0.0, NaN, infinities
      # and reordered values must each serialise as themselves.
      {'i': np.array(7, np.int32), 'b': np.array(True), 'f': np.array(-0.0, np.float32),
       'v': np.array([1, 2], np.int32), 'm': np.array([True, False, False]),
       'c': np.array([0.0, np.nan, -0.0], np.float32),
       'img': np.zeros((1, 2, 3), np.uint8), 't': 'x'},
      {'i': np.array(-7, np.int32), 'b': np.array(False), 'f': np.array(0.0, np.float32),
       'v': np.array([2, 1], np.int32), 'm': np.array([False, True, True]),
       'c': np.array([-0.0, 0.0, np.inf], np.float32),
       'img': np.full((1, 2, 3), 255, np.uint8), 't': 'x'},
  ]
  for row in rows * 2:  # the second pass reads cached entries
    want = reference.serialize_example(features.encode_example(row))
    got = fast(row)
    assert len(got) == len(want)
    assert tf_example_pb2.Example.FromString(got) == tf_example_pb2.Example.FromString(want)
  with pytest.raises(ValueError, match="feature 'm': shape"):
    fast({**rows[0], 'm': np.zeros(2, bool)})
  with pytest.raises(ValueError, match='do not match the features'):
    fast({'i': 1})
