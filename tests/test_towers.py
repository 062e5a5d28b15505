"""Stage-1 PretrainModel on the tiny config: outputs, masks, masking rates, hard negatives."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from mmret.config import load_config
from mmret.towers import masking, negatives
from mmret.towers.pretrain import PretrainModel, set_codebook

B, LQ, LT = 4, 6, 10
CONTRACT_KEYS = {
    'query_vec', 'item_vec', 'qic_query', 'qic_item', 'mlm_query_logits', 'mlm_query_labels',
    'mlm_query_weights', 'mlm_title_logits', 'mlm_title_labels', 'mlm_title_weights',
    'mpm_log_probs', 'mpm_targets', 'mpm_weights', 'qim_logits', 'qim_labels', 'qim2_logits',
    'qim2_labels'}

VOCAB, MASK_ID = 2000, 4  # the tiny model's vocabulary (tokens are drawn below 2000)

def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `model` section of configs/pretrain.py:<variant>, as an unlocked copy."""
  return ml_collections.ConfigDict(load_config(f'configs/pretrain.py:{variant}').model.to_dict())


def make_batch(seed=0, b=B):
  rs = np.random.RandomState(seed)

  def tokens(length, n_real):
    t = rs.randint(5, 2000, (b, length)).astype(np.int32)
    m = np.arange(length)[None, :] < np.asarray(n_real)[:, None]
    t[:, 0] = 2
    t[np.arange(b), np.asarray(n_real) - 1] = 3
    return np.where(m, t, 0).astype(np.int32), m

  qt, qm = tokens(LQ, [4, 6, 3, 5][:b])
  tt, tm = tokens(LT, [10, 7, 4, 9][:b])
  return dict(query_tokens=qt, query_mask=qm, title_tokens=tt, title_mask=tm,
              image=rs.randint(0, 256, (b, 32, 32, 3)).astype(np.uint8),
              image_present=np.array([True, True, False, True][:b]),
              text_present=np.ones((b,), bool), query_index=np.arange(b, dtype=np.int32),
              item_index=np.array([0, 1, 2, 3][:b], np.int32))


@pytest.fixture(scope='module')
def tiny():
  model = PretrainModel(model_config('tiny'), vocab_size=VOCAB, mask_token_id=MASK_ID)
  variables = jax.jit(lambda r: model.init(r, make_batch(), train=False))(jax.random.key(0))
  train = jax.jit(lambda v, b, r: model.apply(
      v, b, train=True, rngs={'dropout': r, 'masking': jax.random.fold_in(r, 1)}))
  evaluate = jax.jit(lambda v, b: model.apply(v, b, train=False))
  item = jax.jit(lambda v, b: model.apply(v, b, method=PretrainModel.encode_item))
  query = jax.jit(lambda v, b: model.apply(v, b, method=PretrainModel.encode_query))
  return model, variables, train, evaluate, item, query


def test_train_outputs_contract_shapes(tiny):
  _, variables, train, _, _, _ = tiny
  out = train(variables, make_batch(), jax.random.key(3))
  assert CONTRACT_KEYS <= set(out)
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes['query_vec'] == shapes['item_vec'] == (B, 32)
  assert shapes['qic_query'] == shapes['qic_item'] == (B, 16)
  # 2000 real tokens, padded to a multiple of model.vocab_pad_multiple (128) for sharding.
  assert shapes['mlm_query_logits'] == (B, 4, 2048) and shapes['mlm_query_labels'] == (B, 4)
  assert shapes['mlm_title_logits'] == (B, 8, 2048) and shapes['mlm_title_weights'] == (B, 8)
  assert shapes['mpm_log_probs'] == shapes['mpm_targets'] == (B, 8, 8)
  assert shapes['mpm_weights'] == (B, 8)
  for k in ('qim_logits', 'qim_labels', 'qim2_logits', 'qim2_labels'):
    assert shapes[k] == (B, 2)
  np.testing.assert_array_equal(out['qim_labels'], [[1, 0]] * B)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
  np.testing.assert_allclose(np.linalg.norm(out['query_vec'], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out['qic_item'], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(jnp.exp(out['mpm_log_probs']).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out['mpm_targets'].sum(-1), 1.0, atol=1e-5)
  # Item 2 has no image: no MPM prediction on it.
  np.testing.assert_array_equal(out['mpm_weights'][2], 0.0)
  # MLM labels are the original tokens at the reported positions.
  assert out['mlm_query_labels'].dtype == jnp.int32


def test_eval_mode_is_deterministic_and_matches_encoders(tiny):
  _, variables, _, evaluate, item, query = tiny
  batch = make_batch()
  out = evaluate(variables, batch)
  for k in ('mlm_query_weights', 'mlm_title_weights', 'mpm_weights'):
    np.testing.assert_array_equal(out[k], 0.0)
  np.testing.assert_allclose(query(variables, batch), out['query_vec'], atol=1e-6)
  np.testing.assert_allclose(item(variables, batch), out['item_vec'], atol=1e-6)


def test_item_masks_missing_modalities_and_padding(tiny):
  _, variables, _, _, item, _ = tiny
  batch = make_batch()
  ref = np.asarray(item(variables, batch))
  # Item 2 has image_present=False: its pixels do not matter; item 0's do.
  other = dict(batch, image=255 - batch['image'])
  got = np.asarray(item(variables, other))
  np.testing.assert_allclose(got[2], ref[2], atol=1e-6)
  assert np.abs(got[0] - ref[0]).max() > 1e-4
  # Title padding content and text_present=False titles do not matter.
  junk = batch['title_tokens'].copy()
  junk[~batch['title_mask']] = 77
  no_text = dict(batch, title_tokens=junk, text_present=np.array([True, False, True, True]))
  ref2 = np.asarray(item(variables, no_text))
  np.testing.assert_allclose(ref2[[0, 2, 3]], ref[[0, 2, 3]], atol=1e-6)
  swapped = dict(no_text, title_tokens=np.where(np.arange(LT) > 0, 99, junk).astype(np.int32))
  np.testing.assert_allclose(np.asarray(item(variables, swapped))[1], ref2[1], atol=1e-6)
  # Neither text nor image: still a finite unit vector.
  empty = dict(batch, text_present=np.zeros((B,), bool), image_present=np.zeros((B,), bool))
  vec = np.asarray(item(variables, empty))
  assert np.all(np.isfinite(vec))
  np.testing.assert_allclose(np.linalg.norm(vec, axis=-1), 1.0, atol=1e-5)


def test_query_padding_does_not_change_vector(tiny):
  _, variables, _, _, _, query = tiny
  batch = make_batch()
  longer = {'query_tokens': np.pad(batch['query_tokens'], ((0, 0), (0, 3))),
            'query_mask': np.pad(batch['query_mask'], ((0, 0), (0, 3)))}
  np.testing.assert_allclose(query(variables, longer), query(variables, batch), atol=1e-5)


def test_qim2_ignores_title_but_qim_does_not(tiny):
  _, variables, _, evaluate, _, _ = tiny
  # Items 0-2 are one product, so every one of rows 0-2 has row 3 as its only negative.
  batch = dict(make_batch(), item_index=np.array([7, 7, 7, 9], np.int32))
  out = evaluate(variables, batch)
  np.testing.assert_array_equal(out['qim_negative'][:3], [3, 3, 3])
  np.testing.assert_array_equal(out['qim_weights'], 1.0)
  # Every title token but [CLS] (QIM2 keeps the item's [CLS] slot) becomes another id.
  title = np.where(batch['title_mask'] & (np.arange(LT) > 0), 123, batch['title_tokens'])
  changed = dict(batch, title_tokens=title.astype(np.int32))
  out2 = evaluate(variables, changed)
  np.testing.assert_allclose(out2['qim2_logits'][:, 0], out['qim2_logits'][:, 0], atol=1e-5)
  np.testing.assert_allclose(out2['qim2_logits'][:3], out['qim2_logits'][:3], atol=1e-5)
  assert np.abs(np.asarray(out2['qim_logits'] - out['qim_logits'])).max() > 1e-5


def test_hardest_negative_hand_made():
  sim = jnp.array([[0.9, 0.8, 0.7, 0.1],
                   [0.2, 0.9, 0.3, 0.95],
                   [0.6, 0.5, 0.4, 0.3],
                   [0.1, 0.2, 0.3, 0.4]])
  # Rows 0 and 1 hold the same item (duplicate): column 1 is a positive for row 0 too.
  pos = negatives.positive_mask(jnp.array([5, 5, 6, 7]))
  np.testing.assert_array_equal(pos[0], [True, True, False, False])
  np.testing.assert_array_equal(negatives.hardest_negative(sim, pos), [2, 3, 0, 2])
  # Rows 2 and 3 share a query: neither may pick the other's item; row 2 falls back to row 0.
  by_query = negatives.positive_mask(jnp.array([5, 5, 6, 7]), jnp.array([0, 1, 2, 2]))
  np.testing.assert_array_equal(negatives.hardest_negative(sim, by_query), [2, 3, 0, 1])
  all_same = negatives.positive_mask(jnp.array([1, 1]))
  np.testing.assert_array_equal(negatives.has_negative(all_same), [False, False])
  grad = jax.grad(lambda s: negatives.hardest_negative(s, pos).astype(jnp.float32).sum())(sim)
  np.testing.assert_array_equal(grad, 0.0)


def test_mlm_masking_rate_rule_and_reported_positions():
  b, length, vocab, mask_id = 512, 32, 1000, 4
  rs = np.random.RandomState(0)
  lengths = rs.randint(3, length + 1, b)
  mask = np.arange(length)[None, :] < lengths[:, None]
  tokens = np.where(mask, rs.randint(10, vocab, (b, length)), 0).astype(np.int32)
  masked, pos, labels, w = jax.jit(lambda r: masking.mask_tokens(
      r, tokens, mask, prob=0.15, max_predictions=length, mask_token_id=mask_id,
      vocab_size=vocab))(jax.random.key(0))
  masked, pos, labels, w = map(np.asarray, (masked, pos, labels, w))
  candidates = np.asarray(masking.mlm_candidates(mask))
  assert candidates.sum() == (lengths - 2).sum()
  rate = w.sum() / candidates.sum()
  assert 0.14 < rate < 0.16, rate
  rows = np.repeat(np.arange(b)[:, None], length, 1)
  chosen = np.zeros_like(mask)
  chosen[rows[w > 0, None][:, 0], pos[w > 0]] = True
  assert not np.any(chosen & ~candidates)  # never [CLS], [SEP] or padding
  assert chosen.sum() == w.sum()           # no position reported twice
  np.testing.assert_array_equal(labels[w > 0], tokens[chosen.nonzero()[0], pos[w > 0]])
  np.testing.assert_array_equal(labels[w == 0], 0)
  # Only reported positions change; among them 80% [MASK], ~10% random, ~10% unchanged.
  assert not np.any((masked != tokens) & ~chosen)
  is_mask = (masked == mask_id)[chosen].mean()
  unchanged = (masked == tokens)[chosen].mean()
  assert 0.76 < is_mask < 0.84 and 0.07 < unchanged < 0.13, (is_mask, unchanged)


def test_max_predictions_caps_the_number_of_predictions():
  mask = np.ones((3, 20), bool)
  tokens = np.arange(60, dtype=np.int32).reshape(3, 20) + 10
  _, pos, _, w = jax.jit(lambda r: masking.mask_tokens(
      r, tokens, mask, prob=0.9, max_predictions=3, mask_token_id=4, vocab_size=100))(
          jax.random.key(1))
  np.testing.assert_array_equal(w, 1.0)
  assert np.all((pos >= 1) & (pos <= 18))


def test_mpm_masking_rate():
  present = np.ones((1024, 16), bool)
  present[::2] = False  # half the items have no image
  pos, w, masked = jax.jit(lambda r: masking.mask_patches(r, present, prob=0.25,
                                                          max_predictions=16))(jax.random.key(0))
  masked = np.asarray(masked)
  assert not masked[::2].any()
  assert 0.24 < masked[1::2].mean() < 0.26
  assert np.asarray(w).sum() == masked.sum()


def test_mpm_codebook_and_soft_targets():
  # Images of two solid colours: the codebook finds both, targets peak on the right class.
  images = np.zeros((6, 16, 16, 3), np.uint8)
  images[:3] = (255, 0, 0)
  images[3:] = (0, 0, 255)
  codebook = masking.fit_mpm_codebook(images, patch_size=8, num_classes=2, seed=0)
  assert codebook.shape == (2, 12)
  rows = sorted(tuple(np.round(c[:3], 3)) for c in codebook)
  assert rows == [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0)]
  feats = masking.patch_colour_features(jnp.asarray(images[:1]), 8)
  targets = masking.soft_targets(feats, jnp.asarray(codebook), temperature=0.05)
  red = int(np.argmin(codebook[:, 2]))
  np.testing.assert_allclose(targets[0, :, red], 1.0, atol=1e-6)
  # By hand: distance^2 to the blue word is 4 cells x (1 + 1) = 8 -> exp(-8 / T).
  expected = np.where(np.arange(2) == red, 1.0, np.exp(-1.0)) / (1 + np.exp(-1.0))
  np.testing.assert_allclose(masking.soft_targets(feats, jnp.asarray(codebook), 8.0)[0, 0],
                             expected, rtol=1e-5)


def test_set_codebook(tiny):
  _, variables, _, evaluate, _, _ = tiny
  codebook = np.random.RandomState(0).rand(8, 12).astype(np.float32)
  new = set_codebook(variables, codebook)
  np.testing.assert_array_equal(new['constants']['mpm_codebook']['codebook'], codebook)
  assert new['params'] is variables['params']
  with pytest.raises(ValueError, match='codebook shape'):
    set_codebook(variables, codebook[:4])


@pytest.mark.parametrize('variant,overrides', [
    ('tiny', {'image_encoder': 'resnet', 'scan': True}),
    ('tiny', {'image_encoder': 'features', 'patch_feature_dim': 10}),
])
def test_every_param_has_logical_axis_names(variant, overrides):
  config = model_config(variant)
  config.update(overrides)
  batch = make_batch()
  if config.image_encoder == 'features':
    batch['patch_features'] = np.zeros((B, 16, 10), np.float32)
  model = PretrainModel(config, vocab_size=VOCAB, mask_token_id=MASK_ID)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  specs = nn.get_partition_spec(abstract['params'])
  leaves = jax.tree.leaves(abstract['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      abstract['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]:
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path
    assert any(n is not None for n in leaf.names), path
  assert len(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
             ) == len(leaves)
  assert abstract['constants']['mpm_codebook']['codebook'].shape[0] == config.mpm_classes


def test_bfloat16_item_tower_is_finite():
  config = model_config('tiny')
  config.dtype = 'bfloat16'
  model = PretrainModel(config, vocab_size=VOCAB, mask_token_id=MASK_ID)
  batch = make_batch()
  vec = jax.jit(lambda: model.apply(model.init(jax.random.key(0), batch, train=False), batch,
                                    method=PretrainModel.encode_item))()
  assert vec.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(vec)))
