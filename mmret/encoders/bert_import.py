"""HuggingFace BERT checkpoints (e.g. all-MiniLM-L6-v2) -> params of our `Transformer`.

`load_hf_bert(path)` reads `config.json` and `model.safetensors` (numpy only, no PyTorch) and
maps the BERT names onto ours:

  embeddings.word_embeddings.weight          word_embeddings            [V, D]
  embeddings.position_embeddings.weight      position_embeddings        [max_len, D]
  embeddings.token_type_embeddings.weight    type_embeddings            [T, D]
  embeddings.LayerNorm.{weight,bias}         embed_ln.{scale,bias}
  encoder.layer.N.attention.self.{query,key,value}.{weight,bias}
                                             encoder/layer_N/attention/{query,key,value}
                                             kernel [D, H, K] = W.T reshaped, bias [H, K]
  encoder.layer.N.attention.output.dense     encoder/layer_N/attention/out, kernel [H, K, D]
  encoder.layer.N.attention.output.LayerNorm encoder/layer_N/ln_attention
  encoder.layer.N.intermediate.dense         encoder/layer_N/mlp_in   kernel [D, M]
  encoder.layer.N.output.dense               encoder/layer_N/mlp_out  kernel [M, D]
  encoder.layer.N.output.LayerNorm           encoder/layer_N/ln_mlp

torch.nn.Linear stores weight as [out, in], so kernels are transposed. The pooler and any MLM
head in the checkpoint are not used (our MLM decoders are tied to the word embeddings).
"""

import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file


def _dense(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {'kernel': weights[prefix + '.weight'].T, 'bias': weights[prefix + '.bias']}


def _ln(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {'scale': weights[prefix + '.weight'], 'bias': weights[prefix + '.bias']}


def load_hf_bert(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a BERT directory. Returns (HF config dict, params of `Transformer`, unscanned layout).

  The params tree has the per-layer layout (`encoder/layer_{i}`); `stack_layers` converts it to
  the nn.scan layout.
  """
  path = pathlib.Path(path)
  config = json.loads((path / 'config.json').read_text())
  if config.get('model_type', 'bert') != 'bert':
    raise ValueError(f'{path}: model_type {config.get("model_type")!r} is not BERT.')
  w = load_file(str(path / 'model.safetensors'))
  # Some exports prefix every name with 'bert.'.
  w = {k[len('bert.'):] if k.startswith('bert.') else k: v for k, v in w.items()}
  d, h = config['hidden_size'], config['num_attention_heads']
  k_dim = d // h
  params: dict[str, Any] = {
      'word_embeddings': w['embeddings.word_embeddings.weight'],
      'position_embeddings': w['embeddings.position_embeddings.weight'],
      'type_embeddings': w['embeddings.token_type_embeddings.weight'],
      'embed_ln': _ln(w, 'embeddings.LayerNorm'),
  }
  layers = {}
  for i in range(config['num_hidden_layers']):
    p = f'encoder.layer.{i}.'
    attention = {}
    for name in ('query', 'key', 'value'):
      dense = _dense(w, p + 'attention.self.' + name)
      attention[name] = {'kernel': dense['kernel'].reshape(d, h, k_dim),
                         'bias': dense['bias'].reshape(h, k_dim)}
    out = _dense(w, p + 'attention.output.dense')
    attention['out'] = {'kernel': out['kernel'].reshape(h, k_dim, d), 'bias': out['bias']}
    layers[f'layer_{i}'] = {
        'attention': attention,
        'ln_attention': _ln(w, p + 'attention.output.LayerNorm'),
        'mlp_in': _dense(w, p + 'intermediate.dense'),
        'mlp_out': _dense(w, p + 'output.dense'),
        'ln_mlp': _ln(w, p + 'output.LayerNorm'),
    }
  params['encoder'] = layers
  params = jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), params)
  return config, params


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """Per-layer params (`encoder/layer_{i}`) -> nn.scan layout (`encoder/layers`, [depth, ...])."""
  layers = params['encoder']
  depth = len(layers)
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *[layers[f'layer_{i}'] for i in range(depth)])
  return {**params, 'encoder': {'layers': stacked}}


def _assign(target: Any, source: Any, where: str) -> Any:
  """Copies `source` leaves into the structure of `target` (boxed or plain), checking shapes."""
  if isinstance(target, nn.LogicallyPartitioned):
    return target.replace_boxed(_assign(target.unbox(), source, where))
  if isinstance(target, dict) or hasattr(target, 'keys'):
    if not isinstance(source, dict) or set(target.keys()) != set(source.keys()):
      got = sorted(source.keys()) if isinstance(source, dict) else type(source).__name__
      raise ValueError(f'pretrained text encoder does not fit at {where or "<root>"}: model has '
                       f'{sorted(target.keys())}, checkpoint has {got}.')
    return {k: _assign(target[k], source[k], f'{where}/{k}') for k in target.keys()}
  if (where.endswith('word_embeddings') and target.shape[1:] == source.shape[1:]
      and target.shape[0] > source.shape[0]):
    # The model pads its vocabulary to a shardable size: the extra rows keep their init.
    # (Zeros when the target is abstract, e.g. from jax.eval_shape.)
    n = source.shape[0]
    rest = (np.asarray(target)[n:] if isinstance(target, (np.ndarray, jax.Array))
            else np.zeros((target.shape[0] - n, *target.shape[1:]), np.float32))
    source = np.concatenate([np.asarray(source), rest])
  if tuple(target.shape) != tuple(source.shape):
    raise ValueError(f'pretrained text encoder shape mismatch at {where}: model '
                     f'{tuple(target.shape)} vs checkpoint {tuple(source.shape)}; set the model '
                     'config (width/depth/heads/mlp_dim/vocab_size/max_len) to the checkpoint\'s '
                     "or use model.text_init='random'.")
  return jnp.asarray(source, target.dtype)


def init_text_encoder_from_minilm(variables: dict[str, Any], path: str | pathlib.Path | None = None,
                                  encoder_key: str = 'encoder') -> dict[str, Any]:
  """Returns `variables` with the PretrainModel's shared encoder replaced by MiniLM's weights.

  Works on boxed (fresh `init`) and unboxed params, per-layer or scanned layouts. Raises
  ValueError naming the first mismatching parameter when the model shape differs from the
  checkpoint. `path` defaults to `mmret.pretrained.minilm_dir()`.
  """
  if path is None:
    from mmret.pretrained import minilm_dir  # Deferred: only this call needs the package.
    path = minilm_dir()
  _, params = load_hf_bert(path)
  target = variables['params'][encoder_key]
  if 'layers' in target['encoder']:  # The model was built with model.scan=True.
    params = stack_layers(params)
  new_params = dict(variables['params'])
  new_params[encoder_key] = _assign(target, params, encoder_key)
  return {**variables, 'params': new_params}
