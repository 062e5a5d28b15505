"""Length bucketing (mmret/data/length_buckets.py): the cut by hand, and the stage-1 model's
outputs, losses and gradients equal on the cut batch and the padded one."""

import functools

import jax
import numpy as np
import pytest

from mmret.config import load_config
from mmret.data import length_buckets
from mmret.jobs.pretrain import objective
from mmret.towers.pretrain import PretrainModel

from test_shared_calls import SHARED, _apply, _batch_with_negatives, _config
from test_towers import MASK_ID, VOCAB


@pytest.mark.parametrize('longest, multiple, full, expected', [
    (7, 4, 12, 8), (8, 4, 12, 8), (9, 4, 12, 12), (11, 8, 12, 12), (0, 4, 12, 4), (3, 16, 12, 12)])
def test_bucket_by_hand(longest, multiple, full, expected):
  assert length_buckets.bucket(longest, multiple, full) == expected


def _mask(lengths, width):
  return np.arange(width)[None, :] < np.array(lengths)[:, None]


def test_cut_by_hand():
  batch = {'query_tokens': np.arange(36).reshape(3, 12), 'query_mask': _mask([3, 5, 1], 12),
           'title_tokens': np.ones((3, 24), np.int32), 'title_mask': _mask([9, 2, 0], 24),
           'neg_title_tokens': np.ones((6, 24), np.int32),
           'neg_title_mask': _mask([1, 13, 2, 2, 0, 4], 24), 'image': np.zeros((3, 4, 4, 3))}
  out = length_buckets.cut(batch, multiple=4)
  assert out['query_tokens'].shape == out['query_mask'].shape == (3, 8)
  np.testing.assert_array_equal(out['query_tokens'], batch['query_tokens'][:, :8])
  # The title group's longest row is a judged negative's (13): both title fields cut to 16.
  assert out['title_mask'].shape == (3, 16) and out['neg_title_tokens'].shape == (6, 16)
  assert out['image'] is batch['image'] and batch['query_mask'].shape == (3, 12)
  assert length_buckets.cut(batch, multiple=0) is batch
  # Processes agree on the longest rows (here another process had a 10-token query).
  agreed = length_buckets.cut(batch, 4, agree=lambda longest: np.maximum(longest, [10, 0]))
  assert agreed['query_mask'].shape == (3, 12) and agreed['title_mask'].shape == (3, 16)
  bad = dict(batch, title_mask=batch['title_mask'][:, ::-1])
  with pytest.raises(ValueError, match='title_mask'):
    length_buckets.cut(bad, 4)


MODES = SHARED  # the separate passes equal these (tests/test_shared_calls.py)


@pytest.mark.parametrize('mode', sorted(MODES))
def test_model_equal_on_the_cut_batch(mode):
  """Every output (token-shaped ones on the kept columns), the loss and every gradient of the
  step's objective: the same on the cut batch. MLM off, dropout 0: no draw shaped like the
  tokens, so training's random masking (MPM) is the same too; MLM's masking is drawn over the
  cut shape, hence other draws."""
  model = PretrainModel(_config(**MODES[mode]), vocab_size=VOCAB, mask_token_id=MASK_ID,
                        tasks=('mpm', 'qic', 'qim', 'qim2'))
  full = _batch_with_negatives()
  # Wider than its rows: 8 and 6 padding columns more than make_batch's longest.
  for key, extra in (('query', 8), ('title', 6), ('neg_title', 6)):
    for field in ('tokens', 'mask'):
      value = np.asarray(full[f'{key}_{field}'])
      full[f'{key}_{field}'] = np.pad(value, ((0, 0), (0, extra)))
  cut = length_buckets.cut(full, multiple=4)
  assert cut['query_mask'].shape[1] < full['query_mask'].shape[1]
  assert cut['title_mask'].shape[1] < full['title_mask'].shape[1]
  variables = jax.jit(lambda r: model.init(r, cut, train=False))(jax.random.key(0))
  loss = load_config('configs/pretrain.py:tiny').loss
  loss.weights.mlm_query = loss.weights.mlm_title = 0.0
  for train in (False, True):
    apply = jax.jit(functools.partial(_apply, model, train=train))
    a, b = apply(variables, full), apply(variables, cut)
    assert set(a) == set(b)
    for key in a:
      x, y = np.asarray(a[key]), np.asarray(b[key])
      if x.shape != y.shape:  # token-shaped: [rows, length, ...]
        x = x[:, :y.shape[1]]
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5, err_msg=f'{key} train={train}')

  def total(params, batch):
    out = _apply(model, {**variables, 'params': params}, batch, True)
    return objective.pretrain_objective(out, batch, loss)[0]
  grad = jax.jit(jax.value_and_grad(total))
  (va, ga), (vb, gb) = grad(variables['params'], full), grad(variables['params'], cut)
  np.testing.assert_allclose(va, vb, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # gradients up to ~10
