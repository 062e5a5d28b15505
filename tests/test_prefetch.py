"""mmret.data.prefetch: the same batches as the plain loop, in order; errors and early exit."""

import threading
import time

import numpy as np
import pytest

from mmret.data import prefetch as prefetch_lib
from mmret.jobs.recall import data as recall_data


def _recall_batches(sampler, maps, steps):
  """The recall job's host work per step: pages -> train_batch (negatives from (seed, step))."""
  rng = np.random.default_rng(0)
  for step in steps:
    pages = {'positives': rng.integers(0, 50, (4, 3)), 'positive_mask': rng.random((4, 3)) < 0.7,
             'query_index': rng.integers(0, 10, 4)}
    yield recall_data.train_batch(pages, maps, sampler, num_negatives=16, seed=3, step=step)


class _Maps:
  query_rows = np.arange(10, dtype=np.int32) * 7
  item_rows = np.arange(50, dtype=np.int32)[::-1].copy()


@pytest.mark.parametrize('depth', [1, 2, 5])
def test_prefetched_recall_batches_are_bit_identical(depth):
  clicks = np.random.default_rng(1).zipf(1.5, 50).astype(np.float64)
  sampler = recall_data.NegativeSampler(clicks)
  plain = list(_recall_batches(sampler, _Maps, range(1, 21)))
  fed = list(prefetch_lib.prefetch(_recall_batches(sampler, _Maps, range(1, 21)), depth=depth))
  assert len(fed) == len(plain) == 20
  for a, b in zip(plain, fed):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype, key
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The negatives do differ from step to step: the comparison above is not of constants.
  assert not np.array_equal(plain[0]['negatives'], plain[1]['negatives'])


def test_work_runs_ahead_on_another_thread():
  made = []

  def source():
    for i in range(4):
      made.append((i, threading.current_thread().name))
      yield i

  it = prefetch_lib.prefetch(source(), depth=2)
  assert next(it) == 0
  deadline = time.monotonic() + 5
  while len(made) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
  # While item 0 is in use, items 1 and 2 are made (the queue holds 2), on the prefetch thread.
  assert [i for i, _ in made][:3] == [0, 1, 2]
  assert {name for _, name in made} == {'mmret-prefetch'}
  assert list(it) == [1, 2, 3]


def test_errors_arrive_in_order_and_close_stops_the_thread():
  def failing():
    yield 1
    yield 2
    raise KeyError('bad page')

  it = prefetch_lib.prefetch(failing(), depth=4)
  assert next(it) == 1 and next(it) == 2
  with pytest.raises(KeyError, match='bad page'):
    next(it)

  produced = []

  def endless():
    i = 0
    while True:
      produced.append(i)
      yield i
      i += 1

  it = prefetch_lib.prefetch(endless(), depth=2)
  assert next(it) == 0
  it.close()
  time.sleep(0.5)
  count = len(produced)
  time.sleep(0.3)
  assert len(produced) == count <= 5  # stopped, having run at most depth + 2 ahead
  with pytest.raises(ValueError, match='depth'):
    next(prefetch_lib.prefetch([], depth=0))
