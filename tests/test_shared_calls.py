"""Encoder-call sharing (model.share_calls) and task skipping (PretrainModel.tasks, the two-tower
mode): the same maths as the separate passes and the full model."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmret.config import load_config
from mmret.jobs.pretrain import model as model_lib
from mmret.jobs.pretrain import objective
from mmret.towers.pretrain import PretrainModel, TASKS

from test_towers import B, MASK_ID, VOCAB, make_batch

H = 2  # judged negatives per row


def _config(**overrides) -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict(load_config('configs/pretrain.py:tiny').model.to_dict())
  model.dropout = 0.0  # then train mode differs from eval only by the (seeded) input masking
  model.update(overrides)
  return model


def _batch_with_negatives(seed=0):
  batch = make_batch(seed)
  neg = make_batch(seed + 1, b=B)  # B rows; H per row below
  rs = np.random.RandomState(seed)
  idx = rs.randint(0, B, B * H)
  for key in ('title_tokens', 'title_mask', 'image', 'image_present', 'text_present'):
    batch[f'neg_{key}'] = np.asarray(neg[key])[idx]
  batch['neg_item_index'] = (10 + idx).astype(np.int32)
  batch['neg_valid'] = np.array([True, False] * B)
  return batch


def _apply(model, variables, batch, train):
  rngs = {'dropout': jax.random.key(1), 'masking': jax.random.key(2)} if train else None
  return model.apply(variables, batch, train=train, rngs=rngs)


@pytest.fixture(scope='module')
def variables():
  model = PretrainModel(_config(), vocab_size=VOCAB, mask_token_id=MASK_ID)
  return jax.jit(lambda r: model.init(r, _batch_with_negatives(), train=False))(
      jax.random.key(0))


# model.share_calls / single_call: two shared-encoder calls, or one (query rows padded to the
# item rows' length and concatenated with them, mmret/towers/packing.py).
SHARED = {'two_calls': dict(share_calls=True, single_call=False),
          'one_call': dict(share_calls=True, single_call=True)}
SEPARATE = dict(share_calls=False, single_call=False)


@pytest.mark.parametrize('mode', sorted(SHARED))
@pytest.mark.parametrize('train', [False, True])
def test_shared_calls_equal_separate_passes(variables, train, mode):
  """Query + QIM2 packed with a block-diagonal mask, item + judged negatives concatenated (and
  with single_call the query rows with them), QIM and QIM2 in one cross call: every output
  equals the separate passes'."""
  batch = _batch_with_negatives()
  outs = {}
  for share, overrides in ((True, SHARED[mode]), (False, SEPARATE)):
    model = PretrainModel(_config(**overrides), vocab_size=VOCAB, mask_token_id=MASK_ID)
    outs[share] = jax.jit(functools.partial(_apply, model, train=train))(variables, batch)
  assert set(outs[True]) == set(outs[False])
  assert {'qic_negatives', 'qim2_logits', 'mlm_title_logits', 'mpm_log_probs'} <= set(outs[True])
  for key in outs[True]:
    np.testing.assert_allclose(outs[True][key], outs[False][key], rtol=2e-5, atol=2e-5,
                               err_msg=key)
  # The packed query rows ignore QIM2's tokens: a different image leaves the query unchanged.
  other = dict(batch, image=np.asarray(batch['image'])[::-1])
  model = PretrainModel(_config(**SHARED[mode]), vocab_size=VOCAB, mask_token_id=MASK_ID)
  moved = jax.jit(functools.partial(_apply, model, train=False))(variables, other)
  np.testing.assert_allclose(moved['query_vec'], _apply(model, variables, batch, False)['query_vec'],
                             atol=1e-6)
  assert not np.allclose(moved['qim2_logits'], outs[True]['qim2_logits'])


@pytest.mark.parametrize('mode', sorted(SHARED))
def test_shared_calls_same_gradients(variables, mode):
  batch = _batch_with_negatives()
  loss = load_config('configs/pretrain.py:tiny').loss

  def grads(overrides):
    model = PretrainModel(_config(**overrides), vocab_size=VOCAB, mask_token_id=MASK_ID)

    def total(params):
      out = _apply(model, {**variables, 'params': params}, batch, True)
      return objective.pretrain_objective(out, batch, loss)[0]
    return jax.jit(jax.grad(total))(variables['params'])

  for a, b in zip(jax.tree.leaves(grads(SHARED[mode])), jax.tree.leaves(grads(SEPARATE))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('train', [False, True])
def test_one_call_without_qim2_or_negatives(variables, train):
  """single_call with the query alone (QIM2 off) and no judged negatives: the query rows
  (shorter) are padded to the item rows; outputs equal the separate passes'."""
  batch = make_batch(0)
  tasks = ('mlm_query', 'mlm_title', 'mpm', 'qic', 'qim')
  outs = []
  for overrides in (SHARED['one_call'], SEPARATE):
    model = PretrainModel(_config(**overrides), vocab_size=VOCAB, mask_token_id=MASK_ID,
                          tasks=tasks)
    outs.append(jax.jit(functools.partial(_apply, model, train=train))(variables, batch))
  assert 'qim2_logits' not in outs[0] and 'qic_negatives' not in outs[0]
  assert set(outs[0]) == set(outs[1])
  for key in outs[0]:
    np.testing.assert_allclose(outs[0][key], outs[1][key], rtol=2e-5, atol=2e-5, err_msg=key)


def test_active_tasks_from_weights():
  weights = dict(mlm_query=0.0, mlm_title=1.0, mpm=0.5, qic=0.0, qim=1.0, qim2=1.0)
  assert model_lib.active_tasks(weights) == ('mlm_title', 'mpm', 'qic', 'qim', 'qim2')
  assert model_lib.active_tasks(weights, off=('mpm', 'qim2')) == ('mlm_title', 'qic', 'qim')
  assert model_lib.active_tasks({name: 0.0 for name in TASKS}) == ('qic',)


def test_two_tower_loss_equals_full_models_qic_loss(variables):
  """tasks=('qic',) computes no other output, has the full parameter tree, and its loss and
  gradients equal the full model's with every other weight at 0."""
  batch = _batch_with_negatives()
  full = PretrainModel(_config(), vocab_size=VOCAB, mask_token_id=MASK_ID)
  two = PretrainModel(_config(), vocab_size=VOCAB, mask_token_id=MASK_ID, tasks=('qic',))
  init_two = jax.jit(lambda r: two.init(r, batch, train=False))(jax.random.key(0))
  assert (jax.tree.structure(init_two['params'])
          == jax.tree.structure(variables['params']))
  out = _apply(two, variables, batch, False)
  assert not {k for k in out if k.startswith(('mlm_', 'mpm_', 'qim'))}
  loss = ml_collections.ConfigDict(load_config('configs/pretrain.py:tiny').loss.to_dict())
  loss.weights = {name: float(name == 'qic') for name in TASKS}

  def total(model, params):
    out = _apply(model, {**variables, 'params': params}, batch, False)
    value, metrics = objective.pretrain_objective(out, batch, loss)
    return value, metrics

  (v_two, m_two), g_two = jax.value_and_grad(functools.partial(total, two), has_aux=True)(
      variables['params'])
  (v_full, m_full), g_full = jax.value_and_grad(functools.partial(total, full), has_aux=True)(
      variables['params'])
  np.testing.assert_allclose(v_two, m_full['loss/qic'], rtol=1e-6)
  np.testing.assert_allclose(v_two, v_full, rtol=1e-6)
  assert 'loss/mlm_query' not in m_two and 'loss/qim' in m_full
  for a, b in zip(jax.tree.leaves(g_two), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_two['qic'])) > 0
