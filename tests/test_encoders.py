"""Shared transformer encoder and patch image encoder (tiny shapes)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmret.encoders import bert_import
from mmret.encoders.image import ImageConfig, PatchEncoder, normalize_image, patchify
from mmret.encoders import transformer
from mmret.encoders.transformer import EncoderLayer, EncoderStack, MultiHeadAttention
from mmret.encoders.transformer import Transformer, TransformerConfig
from mmret.towers import heads

CFG = TransformerConfig(width=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, vocab_size=50,
                        max_len=16)


def _tokens():
  ids = np.array([[1, 7, 8, 9, 2, 0], [1, 10, 2, 0, 0, 0], [1, 11, 12, 13, 14, 2]], np.int32)
  return ids, ids > 0


def _tower(m, ids, mask):
  return m(m.embed_tokens(ids), jnp.zeros_like(ids), mask)


def test_transformer_shapes_and_padding_invariance():
  ids, mask = _tokens()
  model = Transformer(CFG)
  variables = jax.jit(lambda r: model.init(r, ids, mask, method=_tower))(jax.random.key(0))
  encode = jax.jit(lambda v, i, m: heads.retrieval_vector(model.apply(v, i, m, method=_tower), m))
  hidden = jax.jit(lambda v: model.apply(v, ids, mask, method=_tower))(variables)
  assert hidden.shape == (3, 6, 32) and hidden.dtype == jnp.float32
  vec = encode(variables, ids, mask)
  np.testing.assert_allclose(np.linalg.norm(vec, axis=-1), 1.0, atol=1e-5)
  # Four more [PAD] tokens at the end: identical vectors.
  ids_long = np.pad(ids, ((0, 0), (0, 4)))
  np.testing.assert_allclose(encode(variables, ids_long, ids_long > 0), vec, atol=1e-5)
  # Changing a padding token's id changes nothing either (it is masked as a key and pooled out).
  ids_junk = ids.copy()
  ids_junk[1, 4] = 33
  np.testing.assert_allclose(encode(variables, ids_junk, mask), vec, atol=1e-6)
  # ... while changing a real token does.
  ids_real = ids.copy()
  ids_real[1, 1] = 33
  assert np.abs(np.asarray(encode(variables, ids_real, mask) - vec))[1].max() > 1e-3


def test_tied_decoder_uses_word_embeddings():
  ids, mask = _tokens()
  model = Transformer(CFG)
  variables = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask,
                                                         method=_tower)))
  variables = jax.tree.map(lambda s: jnp.asarray(np.random.RandomState(0).randn(*s.shape),
                                                 s.dtype), variables)
  x = jnp.ones((2, 32))
  logits = model.apply(variables, x, method=Transformer.attend)
  np.testing.assert_allclose(logits, x @ variables['params']['word_embeddings'].T, rtol=1e-5)
  assert logits.shape == (2, 50)


# Row 1 has no valid key at all (its output must stay finite: uniform weights).
ATTN_MASK = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)


def _numpy_attention(q, k, v, mask):
  """float64 softmax(q k^T / sqrt(K)) v over valid keys; uniform over all keys when none is."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      if not mask[b].any():
        out[b, :, h] = v[b, :, h].mean(0)
        continue
      s = q[b, :, h] @ k[b, mask[b], h].T / np.sqrt(q.shape[-1])
      w = np.exp(s - s.max(-1, keepdims=True))
      out[b, :, h] = (w / w.sum(-1, keepdims=True)) @ v[b, mask[b], h]
  return out


@pytest.mark.parametrize('lq', [5, 1])
def test_fused_attention_equals_numpy_reference(lq):
  q, k, v = (jax.random.normal(jax.random.key(i), (3, n, 4, 8)) for i, n in
             enumerate((lq, 5, 5)))
  got = jax.jit(transformer.fused_attention)(q, k, v, ATTN_MASK)
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, ATTN_MASK), atol=1e-5)


def test_pairwise_mask_equals_per_segment_attention():
  """A block-diagonal [B, L, L] mask (packed rows: segments 0..2 and 3..4) gives each segment
  exactly its own attention, on the fused and the einsum path."""
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 5, 2, 4)) for i in range(3))
  valid = np.array([[True, True, False, True, True]])
  segment = np.array([0, 0, 0, 1, 1])
  pairs = (segment[:, None] == segment[None, :])[None] & valid[:, None, :]
  fused = jax.jit(transformer.fused_attention)(q, k, v, pairs)
  weights = transformer.attention_weights(q, k, pairs)
  einsum = jnp.einsum('bhqs,bshk->bqhk', weights, v)
  for lo, hi in ((0, 3), (3, 5)):
    part = _numpy_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], valid[:, lo:hi])
    np.testing.assert_allclose(fused[:, lo:hi], part, atol=1e-5)
    np.testing.assert_allclose(einsum[:, lo:hi], part, atol=1e-5)


@pytest.mark.parametrize('dtype,atol', [('float32', 2e-5), ('bfloat16', 3e-2)])
@pytest.mark.parametrize('first_only', [False, True])
def test_fused_attention_module_equals_einsum_path(dtype, atol, first_only):
  cfg = dataclasses.replace(CFG, dtype=dtype)
  fused, ref = (MultiHeadAttention(dataclasses.replace(cfg, attention=a)) for a in
                ('fused', 'einsum'))
  x = jax.random.normal(jax.random.key(1), (3, 5, 32))
  x_q = x[:, :1] if first_only else None
  params = jax.jit(ref.init)(jax.random.key(0), x, ATTN_MASK, x_q)

  def loss(p, xs, module):  # f32 sum of squares: gradients w.r.t. params and inputs.
    return jnp.sum(module.apply(p, xs, ATTN_MASK, x_q).astype(jnp.float32) ** 2)

  outputs = [jax.jit(m.apply)(params, x, ATTN_MASK, x_q) for m in (fused, ref)]
  assert outputs[0].shape == (3, 1 if first_only else 5, 32)
  assert outputs[0].dtype == jnp.dtype(dtype) and bool(jnp.all(jnp.isfinite(outputs[0])))
  np.testing.assert_allclose(outputs[0].astype(np.float32), outputs[1].astype(np.float32),
                             atol=atol, rtol=atol)
  grads = [jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, x, m)
           for m in (fused, ref)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=10 * atol, rtol=atol),
               *grads)


def test_fused_attention_keeps_weight_dropout_on_the_einsum_path(monkeypatch):
  x = jax.random.normal(jax.random.key(1), (3, 5, 32))
  cfg = dataclasses.replace(CFG, dropout=0.5)
  params = MultiHeadAttention(cfg).init(jax.random.key(0), x, ATTN_MASK)
  calls = []  # one entry per call of the fused path
  fused_fn = transformer.fused_attention
  monkeypatch.setattr(transformer, 'fused_attention', lambda *a: calls.append(1) or fused_fn(*a))

  def run(attention, deterministic, rate=0.5):
    module = MultiHeadAttention(dataclasses.replace(cfg, attention=attention, dropout=rate),
                                deterministic=deterministic)
    return module.apply(params, x, ATTN_MASK, rngs={'dropout': jax.random.key(2)})

  # Training with dropout: the einsum path, so the very same dropped weights as 'einsum'.
  np.testing.assert_array_equal(run('fused', False), run('einsum', False))
  assert not calls
  # Evaluation, or training without dropout: the fused path.
  np.testing.assert_allclose(run('fused', True), run('einsum', True), atol=2e-5)
  np.testing.assert_allclose(run('fused', False, 0.0), run('einsum', False, 0.0), atol=2e-5)
  assert len(calls) == 2
  with pytest.raises(ValueError, match='choose from'):
    TransformerConfig(attention='flash')


def test_attention_dropout_zero_trains_on_the_fused_path_with_hidden_dropout(monkeypatch):
  """attention_dropout=0 with dropout=0.3: a training layer calls the fused kernel, matches the
  einsum layer with the same rngs (same hidden-dropout masks, no weight dropout), and its hidden
  dropout is on (training differs from evaluation). attention_dropout=None means `dropout`."""
  x = jax.random.normal(jax.random.key(1), (3, 5, 32))
  cfg = dataclasses.replace(CFG, dropout=0.3, attention_dropout=0.0)
  assert cfg.attention_dropout_rate == 0.0
  assert dataclasses.replace(cfg, attention_dropout=None).attention_dropout_rate == 0.3
  params = EncoderLayer(cfg).init(jax.random.key(0), x, ATTN_MASK)
  calls = []
  fused_fn = transformer.fused_attention
  monkeypatch.setattr(transformer, 'fused_attention', lambda *a: calls.append(1) or fused_fn(*a))

  def run(attention, deterministic, attention_dropout=0.0):
    layer = EncoderLayer(dataclasses.replace(cfg, attention=attention,
                                             attention_dropout=attention_dropout),
                         deterministic=deterministic)
    return np.asarray(layer.apply(params, x, ATTN_MASK, rngs={'dropout': jax.random.key(2)}))

  train_fused = run('fused', False)
  assert len(calls) == 1
  np.testing.assert_allclose(train_fused, run('einsum', False), atol=2e-5)
  # Hidden dropout applied (without it, training and evaluation are the same fused function).
  assert np.abs(train_fused - run('fused', True)).max() > 1e-2
  calls.clear()
  run('fused', False, attention_dropout=None)  # weight dropout 0.3: the einsum path
  assert not calls


def _remat_policies(jaxpr) -> list:
  """The `policy` of every remat op in a jaxpr, nested ones (scan) included."""
  found = []
  for eqn in jaxpr.eqns:
    if 'policy' in eqn.params:
      found.append(eqn.params['policy'])
    for value in eqn.params.values():
      inner = getattr(value, 'jaxpr', value)
      if hasattr(inner, 'eqns'):
        found += _remat_policies(inner)
  return found


@pytest.mark.parametrize('remat,scan,policy', [
    (True, False, 'nothing_saveable'), (False, True, 'nothing_saveable'),
    (True, True, 'nothing_saveable'), (True, True, 'dots_with_no_batch_dims_saveable')])
def test_remat_and_scan_match_plain_stack(remat, scan, policy):
  """Same weights (the scanned layout stacks layer_{i} along a leading axis): same outputs and
  gradients as the plain unrolled stack."""
  x = jax.random.normal(jax.random.key(1), (2, 5, 32))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  plain = EncoderStack(CFG)
  params = nn.unbox(jax.jit(plain.init)(jax.random.key(0), x, mask))['params']

  def loss(p, xs, apply):
    return jnp.sum(apply({'params': p}, xs, mask) ** 2)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  expected, (g_plain, gx_plain) = jax.jit(plain.apply)({'params': params}, x, mask), grad(
      params, x, plain.apply)
  variant = EncoderStack(dataclasses.replace(CFG, remat=remat, scan=scan, remat_policy=policy))
  stack = lambda tree: bert_import.stack_layers({'encoder': tree})['encoder']
  vparams = stack(params) if scan else params
  # The variant's own init has the same tree; scan adds a leading 'layers' logical axis.
  boxed = jax.eval_shape(variant.init, jax.random.key(0), x, mask)['params']
  assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(vparams)
  if scan:
    assert boxed['layers']['mlp_in']['kernel'].names == ('layers', 'embed', 'mlp')
  np.testing.assert_allclose(jax.jit(variant.apply)({'params': vparams}, x, mask), expected,
                             atol=1e-5)
  policies = _remat_policies(jax.make_jaxpr(variant.apply)({'params': vparams}, x, mask).jaxpr)
  assert policies == ([getattr(jax.checkpoint_policies, policy)] * (1 if scan else CFG.depth)
                      if remat else [])
  g_variant, gx_variant = grad(vparams, x, variant.apply)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g_variant,
               stack(g_plain) if scan else g_plain)
  np.testing.assert_allclose(gx_variant, gx_plain, atol=1e-4)


def test_first_only_layer_equals_first_row_of_full_layer():
  x = jax.random.normal(jax.random.key(1), (2, 5, 32))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  full = EncoderLayer(CFG)
  variables = jax.jit(full.init)(jax.random.key(0), x, mask)
  first = jax.jit(EncoderLayer(CFG, first_only=True).apply)(variables, x, mask)
  assert first.shape == (2, 1, 32)
  np.testing.assert_allclose(first[:, 0], jax.jit(full.apply)(variables, x, mask)[:, 0],
                             atol=1e-5)


def test_bfloat16_compute_is_finite_with_float32_params():
  ids, mask = _tokens()
  model = Transformer(dataclasses.replace(CFG, dtype='bfloat16'))
  variables = nn.unbox(jax.jit(lambda r: model.init(r, ids, mask, method=_tower))(
      jax.random.key(0)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  hidden = jax.jit(lambda v: model.apply(v, ids, mask, method=_tower))(variables)
  assert hidden.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(hidden)))


def test_patchify_grid_order():
  # 16x16 image whose 8x8 patches hold the values 0, 1 (top row) and 2, 3 (bottom row).
  img = np.zeros((1, 16, 16, 3), np.uint8)
  for k in range(4):
    r, c = divmod(k, 2)
    img[0, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = k
  patches = patchify(img, 8)
  assert patches.shape == (1, 4, 8, 8, 3)
  np.testing.assert_array_equal(patches.reshape(1, 4, -1).max(-1)[0], [0, 1, 2, 3])
  np.testing.assert_array_equal(patches.reshape(1, 4, -1).min(-1)[0], [0, 1, 2, 3])
  with pytest.raises(ValueError, match='not a multiple of patch_size'):
    patchify(np.zeros((1, 12, 16, 3)), 8)


def test_normalize_image():
  x = normalize_image(jnp.full((1, 1, 1, 3), 255, jnp.uint8))
  np.testing.assert_allclose(x[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                             / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


@pytest.mark.parametrize('mode', ['resnet', 'linear', 'features'])
def test_patch_encoder_modes(mode):
  cfg = ImageConfig(mode=mode, patch_size=8, width=32, resnet_channels=8, resnet_blocks=1,
                    groups=4)
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  feats = rng.randn(2, 16, 10).astype(np.float32)
  enc = PatchEncoder(cfg)
  variables = jax.jit(enc.init)(jax.random.key(0), image, feats)
  apply = jax.jit(enc.apply)
  out = apply(variables, image, feats)
  assert out.shape == (2, 16, 32) and bool(jnp.all(jnp.isfinite(out)))
  # Each patch token depends only on its own patch: editing patch 5 moves token 5 only.
  image2, feats2 = image.copy(), feats.copy()
  image2[0, 8:16, 8:16] = 255 - image2[0, 8:16, 8:16]  # patch (row 1, col 1) = index 5
  feats2[0, 5] += 1.0
  delta = np.abs(np.asarray(apply(variables, image2, feats2) - out)).max(-1)
  assert delta[0, 5] > 1e-4
  delta[0, 5] = 0
  np.testing.assert_allclose(delta, 0.0, atol=1e-6)


def test_patch_encoder_rejects_missing_input():
  enc = PatchEncoder(ImageConfig(mode='features', width=8))
  with pytest.raises(ValueError, match='patch_features'):
    enc.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.uint8), None)
  with pytest.raises(ValueError, match='choose from'):
    ImageConfig(mode='vit')
