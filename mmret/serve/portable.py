"""The query tower as a portable artifact: `jax.export` (serialized StableHLO, the trained
variables embedded as constants) plus the tokenizer and the batch layout beside it, so a
service computes query vectors with jax, numpy and `tokenizers` only, without mmret's model code.

    write_query_tower(model, outdir)        # query_tower.jax + query_tower.json (+ tokenizer/)
    tower = PortableQueryTower.load(outdir)
    tower.encode(['red floral dress'])      # float32 [Q, D], equal to model.encode_queries

The batch dimension is symbolic (any number of queries, one artifact); the token and trigram
lengths are those of training (query_tower.json). The exported function is the model's
`encode_query` applied to {query_tokens int32 [B, Lq], query_mask bool [B, Lq]} (engage also:
trigram_ids int32 [B, T], trigram_mask bool [B, T]).
"""

import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from mmret import files
from mmret.config import ConfigError
from mmret.data import features
from mmret.data import tokenizer as tokenizer_lib
from mmret.serve import model as model_lib

ARTIFACT = 'query_tower.jax'
SPEC = 'query_tower.json'


def export_query_tower(model: model_lib.Model) -> tuple[bytes, dict]:
  """(serialized jax.export.Exported, its input spec) of the model's query tower."""
  sample = model.query_batch(['a'])
  batch = jax.export.symbolic_shape('b')[0]
  args = {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in sample.items()}
  exported = jax.export.export(jax.jit(model.query_vectors_fn()))(args)
  spec = {'inputs': {k: {'shape': ['batch', *v.shape[1:]], 'dtype': str(v.dtype)}
                     for k, v in sample.items()},
          'query_len': int(model.config.data.query_len),
          'trigram_buckets': model.towers.trigram_buckets,
          'max_trigrams': model.towers.max_trigrams, 'tokenizer': 'tokenizer/tokenizer.json',
          'dim': int(model.item_vectors.shape[1]), 'job': model.job}
  return exported.serialize(), spec


def write_query_tower(model: model_lib.Model, directory: str | pathlib.Path) -> pathlib.Path:
  """Writes query_tower.jax, query_tower.json and tokenizer/ into `directory`."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  blob, spec = export_query_tower(model)
  tmp = directory / f'.{ARTIFACT}.tmp'
  tmp.write_bytes(blob)
  tmp.replace(directory / ARTIFACT)
  if not (directory / spec['tokenizer']).is_file():
    model.tokenizer.save(directory / 'tokenizer')
  files.write_text_atomic(directory / SPEC, json.dumps(spec, indent=2) + '\n')
  return directory / ARTIFACT


class PortableQueryTower:
  """The exported query tower read back: strings -> vectors without the model's code."""

  def __init__(self, exported: jax.export.Exported, spec: dict,
               tokenizer: tokenizer_lib.Tokenizer):
    self.exported, self.spec = exported, spec
    self.fields = features.QueryFields(tokenizer, spec['query_len'], spec['trigram_buckets'],
                                       spec['max_trigrams'])

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'PortableQueryTower':
    directory = pathlib.Path(directory)
    missing = [n for n in (ARTIFACT, SPEC) if not (directory / n).is_file()]
    if missing:
      raise ConfigError(f'{directory}: {", ".join(missing)} missing; write them with '
                        '`python -m mmret.export WORKDIR OUTDIR`.')
    spec = json.loads((directory / SPEC).read_text())
    exported = jax.export.deserialize(bytearray((directory / ARTIFACT).read_bytes()))
    tokenizer = tokenizer_lib.Tokenizer.from_pretrained_dir(directory / spec['tokenizer'])
    return cls(exported, spec, tokenizer)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Query strings -> float32 [Q, D], tokenised and truncated as in training."""
    batch = self.fields([str(t) for t in texts])
    return np.asarray(self.exported.call(batch), np.float32)
