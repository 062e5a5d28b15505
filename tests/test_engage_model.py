"""Que2Engage model (mmret/towers/engage.py): modality dropout rates, the trained image path
(colour reaches the document vector, several images per item, precomputed features), the
context encoder with missing values, BatchNorm statistics in train / eval / the train step,
partition specs on 8 fake devices."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmret.config import load_config
from mmret.encoders import context as context_lib
from mmret.towers import modality
from mmret.towers.engage import EngageModel
from mmret.jobs.engage import job as engage_job
from mmret.jobs.engage import objective
from mmret.train import optimizer as optimizer_lib
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib
from mmret.train import step as step_lib

B, G, C, VOCAB = 8, 3, 3, 64


@pytest.fixture(scope='module')
def config():
  c = load_config('configs/engage.py:tiny')
  with c.unlocked():
    c.model.trigram_buckets = 32
  return c


def make_batch(seed=0, b=B, g=G):
  rs = np.random.RandomState(seed)
  lq, lt, t = 6, 8, 5
  q_mask = np.arange(lq)[None] < rs.randint(3, lq + 1, size=(b, 1))
  t_mask = np.arange(lt)[None] < rs.randint(3, lt + 1, size=(b, g, 1))
  present = rs.rand(b, g, C) > 0.2
  return {
      'query_tokens': np.where(q_mask, rs.randint(5, VOCAB, (b, lq)), 0).astype(np.int32),
      'query_mask': q_mask,
      'trigram_ids': rs.randint(1, 32, (b, t)).astype(np.int32),
      'trigram_mask': np.arange(t)[None] < rs.randint(1, t + 1, size=(b, 1)),
      'title_tokens': np.where(t_mask, rs.randint(5, VOCAB, (b, g, lt)), 0).astype(np.int32),
      'title_mask': t_mask,
      'text_present': rs.rand(b, g) > 0.1,
      'image': rs.randint(0, 256, (b, g, 8, 8, 3)).astype(np.uint8),
      'image_present': rs.rand(b, g) > 0.1,
      'context': np.where(present, rs.lognormal(2.0, 1.0, (b, g, C)), 0.0).astype(np.float32),
      'context_present': present,
      'item_index': np.arange(b * g, dtype=np.int32).reshape(b, g),
      'doc_mask': np.ones((b, g), bool),
      'engaged': np.tile(np.eye(1, g, dtype=np.float32), (b, 1)),
      'query_index': np.arange(b, dtype=np.int32),
  }


def init(config, batch):
  model = EngageModel(config.model, vocab_size=VOCAB)
  rng = jax.random.key(0)
  variables = nn.unbox(model.init({'params': rng, 'dropout': rng, 'modality': rng}, batch))
  return model, variables


# -- modality dropout --------------------------------------------------------------------------


@pytest.mark.parametrize('rate', [0.0, 0.2, 0.5, 0.9])
def test_keep_mask_rate_within_binomial_tolerance(rate):
  n = 20_000
  keep = modality.keep_mask(jax.random.key(1), n, rate, train=True)
  dropped = 1.0 - float(jnp.mean(keep))
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs(dropped - rate) <= 4 * sigma + 1e-12
  assert bool(jnp.all(modality.keep_mask(jax.random.key(1), n, rate, train=False)))


def test_modalities_drop_independently_and_remove():
  n = 20_000
  keep = modality.modality_keep(jax.random.key(2), n, {'text': 0.5, 'image': 0.0,
                                                       'context': 0.5}, train=True)
  assert bool(jnp.all(keep['image']))
  both = float(jnp.mean(~keep['text'] & ~keep['context']))
  assert abs(both - 0.25) <= 4 * np.sqrt(0.25 * 0.75 / n)   # independent draws
  removed = modality.modality_keep(None, 4, {'text': 0.5}, train=False, remove=('image',))
  assert bool(jnp.all(removed['text'])) and not bool(jnp.any(removed['image']))
  with pytest.raises(ValueError, match='unknown modalities'):
    modality.modality_keep(None, 4, {}, train=False, remove=('audio',))


def test_model_dropout_rate_and_none_at_eval(config):
  batch = make_batch(b=64, g=4)
  model, variables = init(config, batch)
  out, _ = model.apply(variables, batch, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(3), 'modality': jax.random.key(4)})
  n = 64 * 4
  for name in modality.MODALITIES:
    rate = config.model.modality_dropout[name]
    realised = 1.0 - float(jnp.mean(out[f'keep_{name}']))
    assert abs(realised - rate) <= 4 * np.sqrt(rate * (1 - rate) / n) + 1e-12, name
  evaluated = model.apply(variables, batch, train=False)
  for name in modality.MODALITIES:
    assert bool(jnp.all(evaluated[f'keep_{name}']))
  # Evaluation is deterministic (no random drop): two applies agree.
  again = model.apply(variables, batch, train=False)
  np.testing.assert_array_equal(evaluated['doc_vec'], again['doc_vec'])


def test_remove_equals_absent_flags(config):
  batch = make_batch()
  model, variables = init(config, batch)
  docs = {k: v[:, 0] for k, v in batch.items() if k in (
      'title_tokens', 'title_mask', 'text_present', 'image', 'image_present', 'context',
      'context_present')}
  flags = {'text': 'text_present', 'image': 'image_present', 'context': 'context_present'}
  full = model.apply(variables, docs, method=EngageModel.encode_document)
  for name, flag in flags.items():
    removed = model.apply(variables, docs, method=EngageModel.encode_document, remove=(name,))
    absent = model.apply(variables, {**docs, flag: np.zeros_like(docs[flag])},
                         method=EngageModel.encode_document)
    np.testing.assert_allclose(removed, absent, atol=1e-6)
    assert not np.allclose(removed, full), name
    np.testing.assert_allclose(np.linalg.norm(removed, axis=-1), 1.0, rtol=1e-5)


# -- the image path: a trained image encoder -> shared MLP -> deep-sets fusion ------------------


def _with_mode(config, mode):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.image_encoder = mode
  return c


def _coloured_images(colors, size=16, seed=0):
  """uint8 [len(colors), size, size, 3]: one textured grey background, a centred square painted
  in each colour; the images differ only in the square's colour."""
  rs = np.random.RandomState(seed)
  base = np.clip(128 + rs.randint(-20, 21, (size, size, 3)), 0, 255)
  out = np.repeat(base[None], len(colors), axis=0)
  lo, hi = size // 4, 3 * size // 4
  for k, rgb in enumerate(colors):
    out[k, lo:hi, lo:hi] = rgb
  return out.astype(np.uint8)


def _docs(batch, image):
  docs = {k: v[:, 0] for k, v in batch.items() if k in (
      'title_tokens', 'title_mask', 'text_present', 'context', 'context_present')}
  n = image.shape[0]
  docs = {k: np.repeat(v[:1], n, axis=0) for k, v in docs.items()}  # one title, one context
  docs['text_present'][:] = True
  return {**docs, 'image': image, 'image_present': np.ones((n,), bool)}


@pytest.mark.parametrize('mode', ['linear', 'resnet'])
def test_colour_only_difference_reaches_the_document_vector(config, mode):
  # Same title, same context, images that differ only in colour: at random init (no training)
  # the document vectors differ, by at least half as much as when one title word changes, i.e.
  # the image path reaches the output at a usable scale. (The former fixed pooled-pixel token,
  # std ~6e-5 against word embeddings of std 0.02, moved the vector ~70x less than one word.)
  c = _with_mode(config, mode)
  images = _coloured_images([(200, 30, 30), (30, 30, 200), (200, 30, 30), (200, 30, 30)])
  docs = _docs(make_batch(), images)
  docs['title_tokens'][3, 1] = (docs['title_tokens'][3, 1] + 7) % VOCAB   # one word differs
  model = EngageModel(c.model, vocab_size=VOCAB)
  rng = jax.random.key(0)
  variables = nn.unbox(model.init({'params': rng, 'dropout': rng, 'modality': rng},
                                  docs, method=EngageModel.encode_document))
  vec = np.asarray(model.apply(variables, docs, method=EngageModel.encode_document))
  np.testing.assert_allclose(vec[0], vec[2], atol=1e-6)         # same image, same vector
  colour_gap = np.linalg.norm(vec[0] - vec[1])
  word_gap = np.linalg.norm(vec[0] - vec[3])
  no_image = np.asarray(model.apply(variables, docs, method=EngageModel.encode_document,
                                    remove=('image',)))
  image_gap = np.linalg.norm(vec[0] - no_image[0])
  assert colour_gap > 0.5 * word_gap, (colour_gap, word_gap)
  assert colour_gap > 0.2 * image_gap, (colour_gap, image_gap)
  # The colour difference reaches the image encoder's parameters: their gradient is non-zero.
  def sim(params):
    v = model.apply({**variables, 'params': params}, docs, method=EngageModel.encode_document)
    return jnp.sum(v[0] * v[1])
  grads = jax.grad(sim)(variables['params'])
  assert float(optax_global_norm(grads['image_encoder'])) > 0.0


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_several_images_per_item_deep_sets(config):
  # [N, M, S, S, 3] with a per-image present mask: order-invariant, absent images ignored, one
  # present image == the same image given alone ([N, S, S, 3]).
  images = _coloured_images([(200, 30, 30), (30, 200, 30), (30, 30, 200)], size=8)
  docs = _docs(make_batch(), images[:2])
  model, variables = init(config, make_batch())
  enc = functools.partial(model.apply, variables, method=EngageModel.encode_document)
  a, b, junk = images[0], images[1], images[2]
  multi = {**docs, 'image': np.stack([np.stack([a, b]), np.stack([b, a])]),
           'image_present': np.ones((2, 2), bool)}
  v = np.asarray(enc(multi))
  np.testing.assert_allclose(v[0], v[1], atol=1e-5)              # a set: order does not matter
  masked = {**docs, 'image': np.stack([np.stack([a, junk]), np.stack([a, b])]),
            'image_present': np.array([[True, False], [True, False]])}
  single = {**docs, 'image': np.stack([a, a]), 'image_present': np.ones((2,), bool)}
  np.testing.assert_allclose(enc(masked), enc(single), atol=1e-5)
  assert not np.allclose(v[0], np.asarray(enc(single))[0], atol=1e-4)  # {a, b} != {a}
  none = {**masked, 'image_present': np.zeros((2, 2), bool)}
  np.testing.assert_allclose(enc(none), enc(single, remove=('image',)), atol=1e-5)


def test_precomputed_image_features_mode(config):
  c = _with_mode(config, 'features')
  rs = np.random.RandomState(0)
  docs = _docs(make_batch(), _coloured_images([(0, 0, 0)] * 2, size=8))
  docs.pop('image')
  docs['image_features'] = rs.randn(2, 3, 10).astype(np.float32)    # [N, M, F]
  docs['image_present'] = np.array([[True, True, False], [True, True, True]])
  model = EngageModel(c.model, vocab_size=VOCAB)
  rng = jax.random.key(0)
  variables = nn.unbox(model.init({'params': rng, 'dropout': rng, 'modality': rng}, docs,
                                  method=EngageModel.encode_document))
  assert variables['params']['image_encoder']['project']['kernel'].shape == (10, c.model.width)
  vec = np.asarray(model.apply(variables, docs, method=EngageModel.encode_document))
  assert np.all(np.isfinite(vec)) and not np.allclose(vec[0], vec[1], atol=1e-4)
  # Only present images count: the third feature row of item 0 is ignored.
  other = {**docs, 'image_features': docs['image_features'].copy()}
  other['image_features'][0, 2] = 100.0
  np.testing.assert_allclose(model.apply(variables, other, method=EngageModel.encode_document),
                             vec, atol=1e-5)
  with pytest.raises(ValueError, match='image_features'):
    model.apply(variables, {k: v for k, v in docs.items() if k != 'image_features'},
                method=EngageModel.encode_document)


def test_unknown_image_encoder_names_the_key(config):
  c = _with_mode(config, 'vit')
  with pytest.raises(ValueError, match='model.image_encoder'):
    init(c, make_batch())


# -- context encoder: missing values and BatchNorm ---------------------------------------------


def test_context_encoder_ignores_missing_values():
  rs = np.random.RandomState(0)
  x = rs.lognormal(2.0, 1.0, (16, C)).astype(np.float32)
  present = rs.rand(16, C) > 0.3
  present[:, 2] = False                               # a column missing in the whole batch
  enc = context_lib.ContextEncoder(width=8, hidden=16, momentum=0.9)
  stored = np.where(present, x, 0.0)                  # docs/DATA.md: missing -> 0.0
  garbage = np.where(present, x, 1e6)                 # any stored value must not matter
  variables = enc.init(jax.random.key(0), stored, present, train=False)
  out0, upd0 = enc.apply(variables, stored, present, train=True, mutable=['batch_stats'])
  out1, upd1 = enc.apply(variables, garbage, present, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out0, out1, atol=1e-6)
  stats = upd0['batch_stats']['batch_norm']
  assert np.all(np.isfinite(out0))
  # Running mean moved towards the masked batch mean of log1p(x); the all-missing column kept
  # its initial statistics (0 mean, 1 variance).
  lx = np.log1p(x)
  for c in range(2):
    m = lx[present[:, c], c]
    np.testing.assert_allclose(stats['mean'][c], 0.1 * m.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats['var'][c], 0.9 + 0.1 * m.var(), rtol=1e-5)
  assert stats['mean'][2] == 0.0 and stats['var'][2] == 1.0
  np.testing.assert_allclose(upd0['batch_stats']['batch_norm']['mean'],
                             upd1['batch_stats']['batch_norm']['mean'], rtol=1e-6)
  # Evaluation uses the running statistics and changes nothing.
  evaluated = enc.apply({**variables, **upd0}, garbage, present, train=False)
  assert np.all(np.isfinite(evaluated))
  # With no value present at all the row still gets a finite token.
  none = enc.apply({**variables, **upd0}, stored, np.zeros_like(present), train=False)
  assert np.all(np.isfinite(none))


# -- sharding ----------------------------------------------------------------------------------


@pytest.mark.parametrize('mode', ['linear', 'resnet'])
def test_partition_specs_and_batch_stats_in_a_step_on_8_devices(config, mode):
  assert jax.device_count() == 8
  config = _with_mode(config, mode)
  batch = make_batch()
  mesh = sharding_lib.make_mesh((4, 2))
  rules = sharding_lib.rules_from_config(config.axis_rules)
  model = EngageModel(config.model, vocab_size=VOCAB)
  tx = optimizer_lib.make_optimizer(config.optim, 10)
  state, shardings = state_lib.create_sharded_state(
      lambda r: model.init({'params': r, 'dropout': r, 'modality': r}, batch), tx,
      jax.random.key(0), mesh, rules, state_lib.step_key_data(1, 'rbg'))
  p = shardings.params
  assert p['trigram_bag']['embedding'].spec == P('model', None)
  assert p['encoder']['word_embeddings'].spec == P('model', None)
  assert p['query_mlp']['dense_in']['kernel'].spec == P(None, 'model')
  assert p['query_mlp']['dense_out']['kernel'].spec == P('model', None)
  assert p['image_phi']['dense_in']['kernel'].spec == P(None, 'model')
  assert p['image_rho']['dense_out']['kernel'].spec == P('model', None)
  assert p['image_encoder']['project']['kernel'].spec == P(None, None)
  assert p['image_norm']['scale'].spec == P(None)
  if mode == 'resnet':
    assert p['image_encoder']['resnet']['stem']['kernel'].spec == P(None, None, None, None)
    assert p['image_encoder']['resnet']['block_0']['norm1']['scale'].spec == P(None)
  assert p['context_encoder']['mlp_in']['kernel'].spec == P(None, 'model')
  assert p['context_encoder']['batch_norm']['scale'].spec == P(None)
  assert p['doc_proj']['kernel'].spec == P(None, 'model')
  bs = shardings.constants['batch_stats']['context_encoder']['batch_norm']
  assert bs['mean'].spec == P()
  # One step on the 4x2 mesh: finite, and it writes new BatchNorm statistics into the state
  # (so they are checkpointed); evaluation reads them without changing them.
  before = jax.device_get(state.constants['batch_stats'])
  step = step_lib.make_train_step(
      model, tx, functools.partial(objective.engage_objective, loss=config.loss), mesh,
      shardings, rng_streams=engage_job.RNG_STREAMS, mutable=('batch_stats',))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    glob = {k: jax.device_put(v, sharding_lib.batch_sharding(mesh)) for k, v in batch.items()}
    state, metrics = step(state, glob)
  assert np.isfinite(float(metrics['loss/total']))
  after = jax.device_get(state.constants['batch_stats'])
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)))
  variables = jax.device_get({'params': state.params, **state.constants})
  out = model.apply(variables, batch, train=False)  # no `mutable`: eval never writes stats
  assert np.all(np.isfinite(out['doc_vec']))
