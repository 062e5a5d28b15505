"""A fast tf.train.Example encoder for TFDS rows of scalars, 1-D tensors and text.

TFDS serialises a row feature by feature through numpy and protobuf objects (~30 us a field),
which makes a 14M-row interaction split (SynthShop `large`) take hours. `RowSerializer` writes
the same wire format directly for the common features: integer/bool tensors as `int64_list`,
floating ones as `float_list` (flattened, at most one unknown dimension), `Text` as a one-element
`bytes_list`; any other feature goes through TFDS's own serializer, one field at a time. The
records parse to the same Example as TFDS's and have the same length; only the order of the
feature map's entries may differ (protobuf maps have none). tests/test_tfds_writer.py checks
this.

  serializer = RowSerializer(builder.info.features)
  record = serializer(example)   # bytes, what ExampleSerializer(...).serialize_example gives
"""

import struct
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

_MASK64 = (1 << 64) - 1
# Values cached per field (flags, days, positions, query strings, small tensors): at most this
# many, so a field of unique values (item ids) costs bounded memory.
_CACHE_PER_FIELD = 1 << 16
_CACHED_ARRAY_SIZE = 16  # arrays of at most this many values are cached by value


def _varint(n: int) -> bytes:
  """Protobuf base-128 varint; negative int64 as its two's complement (10 bytes)."""
  n &= _MASK64
  out = bytearray()
  while n >= 0x80:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
  """A length-delimited field: key byte (field number << 3 | 2), length, payload."""
  return bytes((tag,)) + _varint(len(payload)) + payload


def _packed_varints(values: np.ndarray) -> bytes:
  """Varints of int64 values [n], all at once: 7 bits a byte, high bit = more bytes follow."""
  u = values.astype(np.int64).view(np.uint64)
  shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
  groups = (u[:, None] >> shifts) & np.uint64(0x7F)                       # [n, 10]
  length = 1 + ((u[:, None] >> shifts[1:]) != 0).sum(1)                  # [n]
  more = np.arange(10) < (length - 1)[:, None]
  data = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
  return data[np.arange(10) < length[:, None]].tobytes()


def _packed_bytes(values: np.ndarray) -> bytes:
  """Varints of uint8 values [n]: one byte below 128, else two (low 7 bits | 0x80, then 1)."""
  high = values >= 0x80
  data = np.stack([(values & 0x7F) | (high.astype(np.uint8) << 7), values >> 7], axis=1)
  return data[np.stack([np.ones_like(high), high], axis=1)].tobytes()


def _int64_feature(values: np.ndarray) -> bytes:
  if values.dtype == np.uint8 or values.dtype == np.bool_:
    packed = _packed_bytes(values.astype(np.uint8))
  elif values.size > 4:
    packed = _packed_varints(values)
  else:
    packed = b''.join(_varint(v) for v in values.tolist())
  return _field(0x1A, _field(0x0A, packed) if packed else b'')  # Feature.int64_list = 3


def _float_feature(values: np.ndarray) -> bytes:
  packed = values.astype('<f4').tobytes()
  return _field(0x12, _field(0x0A, packed) if packed else b'')  # Feature.float_list = 2


def _bytes_feature(value: bytes) -> bytes:
  return _field(0x0A, _field(0x0A, value))  # Feature.bytes_list = 1, one value


def _kind(feature) -> str:
  if isinstance(feature, tfds.features.Text):
    return 'text'
  if not isinstance(feature, tfds.features.Tensor) or feature.shape.count(None) > 1:
    return 'generic'
  dtype = np.dtype(feature.np_dtype)
  if dtype == np.bool_ or np.issubdtype(dtype, np.signedinteger) or dtype == np.uint8:
    return 'int'
  if dtype == np.float32:
    return 'float'
  return 'generic'


class RowSerializer:
  """Serialises example dicts of a flat FeaturesDict to tf.train.Example bytes."""

  def __init__(self, features: tfds.features.FeaturesDict):
    self._features = features
    self._kinds = {name: _kind(f) for name, f in features.items()}
    self._keys = {name: _field(0x0A, name.encode()) for name in features}
    self._cache: dict[str, dict] = {name: {} for name in features}

  def _generic(self, name: str, value: Any) -> bytes:
    """The Feature bytes TFDS writes for one field (its serializer on a one-field dict)."""
    feature = self._features[name]
    serializer = example_serializer.ExampleSerializer({name: feature.get_serialized_info()})
    example = serializer.serialize_example({name: feature.encode_example(value)})
    # Example{features{feature{key: name, value: F}}}: peel Example.features, the map entry,
    # then the entry's key, leaving F's length-delimited field.
    body = _strip(_strip(example))
    return _strip(body[len(self._keys[name]):])

  def feature(self, name: str, value: Any) -> bytes:
    """The serialised `Feature` message of one field."""
    kind = self._kinds[name]
    if kind == 'text':
      data = value.encode('utf-8') if isinstance(value, str) else bytes(value)
      return _bytes_feature(data)
    shape = self._features[name].shape
    if kind == 'int':
      if not shape and type(value) in (int, bool):  # the common case, without numpy
        return _field(0x1A, _field(0x0A, _varint(int(value))))
      array = np.asarray(value, self._features[name].np_dtype)
      _check_shape(name, array.shape, shape)
      return _int64_feature(array.ravel())
    if kind == 'float':
      if not shape and type(value) in (int, float):
        return _field(0x12, _field(0x0A, struct.pack('<f', value)))
      array = np.asarray(value, np.float32)
      _check_shape(name, array.shape, shape)
      return _float_feature(array.ravel())
    return self._generic(name, value)

  def entry(self, name: str, value: Any) -> bytes:
    """The feature map entry {name: value}, cached for repeated scalars and small tensors."""
    if isinstance(value, np.ndarray):
      # Empty tensors, 0-d flags and short vectors (presence masks) repeat row after row: keyed
      # by their bytes, they are serialised once (a 0-d array through numpy costs ~17 us).
      key = ((value.shape, value.dtype.str, value.tobytes())
             if value.size <= _CACHED_ARRAY_SIZE else None)
    else:
      key = (type(value), value) if type(value) in (int, bool, float, str) else None
    cache = self._cache[name]
    if key is not None and key in cache:
      return cache[key]
    out = _field(0x0A, self._keys[name] + _field(0x12, self.feature(name, value)))
    if key is not None and len(cache) < _CACHE_PER_FIELD:
      cache[key] = out
    return out

  def __call__(self, example: dict[str, Any]) -> bytes:
    if example.keys() != self._kinds.keys():
      raise ValueError(f'example fields {sorted(example.keys() ^ self._kinds.keys())} '
                       'do not match the features')
    return _field(0x0A, b''.join([self.entry(name, example[name]) for name in self._kinds]))


def _check_shape(name: str, got: tuple[int, ...], want: tuple[int | None, ...]) -> None:
  if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
    raise ValueError(f'feature {name!r}: shape {got} does not match {want}')


def _strip(data: bytes) -> bytes:
  """The payload of a message made of one length-delimited field."""
  n, shift, i = 0, 0, 1
  while True:
    byte = data[i]
    n |= (byte & 0x7F) << shift
    i += 1
    shift += 7
    if byte < 0x80:
      break
  if i + n != len(data):
    raise ValueError('expected exactly one length-delimited field')
  return data[i:]

