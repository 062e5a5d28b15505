"""all-MiniLM-L6-v2 imported into our encoder == an independent numpy BERT."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from safetensors.numpy import load_file

from mmret import pretrained
from mmret.config import load_config
from mmret.encoders import bert_import
from mmret.encoders.transformer import Transformer
from mmret.towers import heads
from mmret.towers.config import transformer_config
from mmret.towers.pretrain import PretrainModel

_erf = np.vectorize(math.erf)

MINILM_VOCAB = 30522

def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `model` section of configs/pretrain.py:<variant>, as an unlocked copy."""
  return ml_collections.ConfigDict(load_config(f'configs/pretrain.py:{variant}').model.to_dict())


@pytest.fixture(scope='module')
def minilm():
  path = pretrained.minilm_dir()
  config, params = bert_import.load_hf_bert(path)
  vocab = {w: i for i, w in enumerate((path / 'vocab.txt').read_text().splitlines())}
  return path, config, params, vocab


def _tokens(vocab, sentences, length):
  """Whole-word lookup ([CLS] words [SEP] [PAD]...); the test words are all single wordpieces."""
  ids = np.zeros((len(sentences), length), np.int32)
  mask = np.zeros((len(sentences), length), bool)
  for r, s in enumerate(sentences):
    row = [vocab['[CLS]']] + [vocab[w] for w in s.split()] + [vocab['[SEP]']]
    ids[r, :len(row)], mask[r, :len(row)] = row, True
  return ids, mask


def _numpy_bert(w, config, ids, mask):
  """Plain BERT forward from the raw HF tensors. -> mean-pooled, L2-normalised [B, D]."""
  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + config['layer_norm_eps']) * w[p + '.weight'] + w[p + '.bias']

  def lin(x, p):
    return x @ w[p + '.weight'].T + w[p + '.bias']

  b, length = ids.shape
  h_count = config['num_attention_heads']
  x = (w['embeddings.word_embeddings.weight'][ids]
       + w['embeddings.position_embeddings.weight'][np.arange(length)][None]
       + w['embeddings.token_type_embeddings.weight'][np.zeros_like(ids)])
  x = ln(x.astype(np.float64), 'embeddings.LayerNorm')
  for i in range(config['num_hidden_layers']):
    p = f'encoder.layer.{i}.'
    split = lambda t: t.reshape(b, length, h_count, -1).transpose(0, 2, 1, 3)
    q, k, v = (split(lin(x, p + 'attention.self.' + n)) for n in ('query', 'key', 'value'))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None, None, :], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    x = ln(x + lin(ctx, p + 'attention.output.dense'), p + 'attention.output.LayerNorm')
    hidden = lin(x, p + 'intermediate.dense')
    hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
    x = ln(x + lin(hidden, p + 'output.dense'), p + 'output.LayerNorm')
  pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_load_hf_bert_shapes(minilm):
  _, config, params, _ = minilm
  assert config['hidden_size'] == 384 and config['num_hidden_layers'] == 6
  assert params['word_embeddings'].shape == (30522, 384)
  layer = params['encoder']['layer_5']
  assert layer['attention']['query']['kernel'].shape == (384, 12, 32)
  assert layer['attention']['out']['kernel'].shape == (12, 32, 384)
  assert layer['mlp_in']['kernel'].shape == (384, 1536)


def _abstract_variables(variant, ids, mask):
  model = PretrainModel(model_config(variant), vocab_size=MINILM_VOCAB, mask_token_id=103)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), _pair_batch(ids, mask),
                                           train=False))


def test_minilm_in_pretrain_model_matches_numpy_bert(minilm):
  path, config, _, vocab = minilm
  raw = {k: v.astype(np.float64) for k, v in load_file(str(path / 'model.safetensors')).items()
         if v.dtype != np.int64}
  sentences = ['white dress', 'red dress', 'laptop', 'cotton summer dress for women']
  ids, mask = _tokens(vocab, sentences, length=9)
  expected = _numpy_bert(raw, config, ids, mask)

  # The import goes through the PretrainModel's (abstract) variables, so the names and shapes
  # checked are those the model really has; the query tower is then run on the result.
  variables = bert_import.init_text_encoder_from_minilm(
      _abstract_variables('default', ids, mask), path)
  encoder = Transformer(transformer_config(model_config('default'), MINILM_VOCAB))

  @jax.jit
  def encode_query(params, ids, mask):
    def tower(m, ids, mask):
      return m(m.embed_tokens(ids), jnp.zeros_like(ids), mask)
    hidden = encoder.apply({'params': params}, ids, mask, method=tower)
    return heads.retrieval_vector(hidden, mask)

  params = nn.unbox(variables['params']['encoder'])
  got = encode_query(params, ids, mask)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)
  # Dropping the trailing padding (9 -> 7 tokens) must not change any vector.
  got_short = encode_query(params, ids[:, :7], mask[:, :7])
  np.testing.assert_allclose(np.asarray(got_short), expected, atol=1e-4)

  sims = expected @ expected.T
  # Sentence-embedding sanity: two dresses are closer than a dress and a laptop.
  assert sims[0, 1] > sims[0, 2] + 0.1
  assert sims[0, 3] > sims[0, 2]


def test_init_from_minilm_rejects_wrong_shape():
  ids = np.array([[2, 10, 3, 0]], np.int32)
  variables = _abstract_variables('tiny', ids, ids > 0)
  with pytest.raises(ValueError, match='shape mismatch at encoder/'):
    bert_import.init_text_encoder_from_minilm(variables)


def test_init_from_minilm_keeps_boxes_and_other_params(minilm):
  path, _, params, _ = minilm
  ids = np.array([[101, 2317, 102, 0]], np.int32)
  abstract = _abstract_variables('default', ids, ids > 0)
  variables = bert_import.init_text_encoder_from_minilm(abstract, path)
  word = variables['params']['encoder']['word_embeddings']
  assert isinstance(word, nn.LogicallyPartitioned) and word.names == ('vocab', 'embed')
  np.testing.assert_array_equal(np.asarray(word.unbox()[2317]), params['word_embeddings'][2317])
  assert variables['params']['mlm_query'] is abstract['params']['mlm_query']
  assert variables['constants'] is abstract['constants']


def test_stack_layers_matches_scan_layout(minilm):
  _, _, params, _ = minilm
  stacked = bert_import.stack_layers(params)['encoder']['layers']
  assert stacked['mlp_out']['kernel'].shape == (6, 1536, 384)
  np.testing.assert_array_equal(stacked['ln_mlp']['scale'][2],
                                params['encoder']['layer_2']['ln_mlp']['scale'])


def _pair_batch(ids, mask):
  """A minimal pre-training batch (title = query, 32x32 images) for model.init."""
  b = ids.shape[0]
  return {'query_tokens': ids, 'query_mask': mask, 'title_tokens': ids, 'title_mask': mask,
          'image': np.zeros((b, 32, 32, 3), np.uint8), 'image_present': np.ones((b,), bool),
          'text_present': np.ones((b,), bool), 'query_index': np.arange(b, dtype=np.int32),
          'item_index': np.arange(b, dtype=np.int32)}
