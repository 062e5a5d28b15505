"""The self-contained model directory every job leaves in `<workdir>/model/` (issue 15).

Everything needed to use the trained model without the data cache or the config file:

  model/format.json         {"format_version": 1, "job": ..., "num_items", "dim",
                             "context_names": [...], "image_size", "mmret_version"}
  model/config.json         the resolved config (read back by `read_config`)
  model/tokenizer/          tokenizer.json + vocab.txt (mmret.data.tokenizer.Tokenizer.save)
  model/variables.msgpack   the final Flax variables ({'params': ..., <constants>}), numpy
  model/items.jsonl         the catalog the job evaluated on, in item-index order:
                            {"item_id", "title", "image"} per line (image: path or null)
  model/item_vectors.npy    float32 [N, D]: the item vectors the job's evaluation searched

    save(workdir / 'model', config=..., tokenizer=..., variables=..., items=..., ...)
    files = load(workdir / 'model')      # ConfigError naming what is missing or stale

A directory written by another format version is refused with a one-line ConfigError that says
what to do, never read half-way.
"""

import dataclasses
import importlib.metadata
import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np

from mmret.config import ConfigError
from mmret.data import records
from mmret.data import tokenizer as tokenizer_lib
from mmret.evaluate import vectors as vectors_lib
from mmret.files import write_text_atomic

FORMAT_VERSION = 1
MODEL_DIR = 'model'
FILES = ('format.json', 'config.json', 'tokenizer/tokenizer.json', 'variables.msgpack',
         'items.jsonl', 'item_vectors.npy')


def _version() -> str:
  try:
    return importlib.metadata.version('mmret')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def save(directory: pathlib.Path, *, config: ml_collections.ConfigDict,
         tokenizer: tokenizer_lib.Tokenizer, variables: Any, items: Sequence[records.Item],
         item_vectors: np.ndarray, context_names: Sequence[str]) -> pathlib.Path:
  """Writes the model directory (see the module docstring); format.json last, so a directory
  with it is complete. variables: the model's Flax variables (possibly sharded jax.Arrays;
  gathered to this host). item_vectors: float32 [N, D] in catalog order, N = len(items)."""
  item_vectors = np.asarray(item_vectors, np.float32)
  if item_vectors.shape[0] != len(items):
    raise ValueError(f'{item_vectors.shape[0]} item vectors for {len(items)} items.')
  directory = pathlib.Path(directory)
  (directory / 'format.json').unlink(missing_ok=True)
  directory.mkdir(parents=True, exist_ok=True)
  write_text_atomic(directory / 'config.json',
                                config.to_json_best_effort(indent=2, sort_keys=True))
  if (directory / 'tokenizer').exists():
    shutil.rmtree(directory / 'tokenizer')
  tokenizer.save(directory / 'tokenizer')
  host = jax.tree.map(lambda x: vectors_lib.to_host(x) if isinstance(x, jax.Array)
                      else np.asarray(x), variables)
  (directory / 'variables.msgpack').write_bytes(flax.serialization.msgpack_serialize(host))
  lines = [json.dumps({'item_id': it.item_id, 'title': it.title, 'image': it.image})
           for it in items]
  write_text_atomic(directory / 'items.jsonl', ''.join(f'{x}\n' for x in lines))
  np.save(directory / 'item_vectors.npy', item_vectors)
  info = {'format_version': FORMAT_VERSION, 'job': config.job, 'num_items': len(items),
          'dim': int(item_vectors.shape[1]), 'context_names': list(context_names),
          # A recall config reads its data through the stage 1 it embeds.
          'image_size': int((config.data if 'data' in config else config.stage1.data
                             ).image_size), 'mmret_version': _version()}
  write_text_atomic(directory / 'format.json', json.dumps(info, indent=2) + '\n')
  return directory


def read_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  """A config.json written by a run -> ConfigDict (lists stay lists; nothing else changes)."""
  try:
    return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path}: unreadable config ({e}); re-run the job to write it again.'
                      ) from None


@dataclasses.dataclass
class ModelFiles:
  """A model directory read back. items: [N] dicts {item_id, title, image}; item_vectors
  float32 [N, D]; variables: nested dicts of numpy arrays."""
  directory: pathlib.Path
  info: dict[str, Any]
  config: ml_collections.ConfigDict
  tokenizer: tokenizer_lib.Tokenizer
  variables: dict[str, Any]
  items: list[dict[str, Any]]
  item_vectors: np.ndarray


def find(path: pathlib.Path) -> pathlib.Path:
  """A model directory itself, or a workdir holding one in model/ (or a serving directory)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_dir():
    raise ConfigError(f'{path}: no such directory; give a workdir of a finished run or a '
                      'directory written by `python -m mmret.export`.')
  if (path / MODEL_DIR).is_dir() and not (path / 'format.json').is_file():
    return path / MODEL_DIR
  return path


def check(directory: pathlib.Path, extra: Sequence[str] = ()) -> dict[str, Any]:
  """format.json of a complete directory of this format version; else one-line ConfigError."""
  missing = [name for name in (*FILES, *extra) if not (directory / name).exists()]
  if missing:
    raise ConfigError(
        f'{directory} is incomplete: {", ".join(missing)} missing (a run that has not finished, '
        'one from before mmret wrote model directories, or an interrupted export); re-run the '
        'job in its workdir (it resumes and writes them), or the export.')
  try:
    info = json.loads((directory / 'format.json').read_text())
  except ValueError as e:
    raise ConfigError(f'{directory / "format.json"}: unreadable ({e}).') from None
  if info.get('format_version') != FORMAT_VERSION:
    raise ConfigError(
        f'{directory} has model format version {info.get("format_version")!r} (written by '
        f'mmret {info.get("mmret_version", "?")}); this mmret reads version {FORMAT_VERSION}: '
        're-run the job (or the export) with this version.')
  return info


def load(path: pathlib.Path, extra: Sequence[str] = ()) -> ModelFiles:
  """Reads a model directory (or the one in a workdir); `extra`: files it must also hold."""
  directory = find(path)
  info = check(directory, extra)
  variables = flax.serialization.msgpack_restore((directory / 'variables.msgpack').read_bytes())
  items = [json.loads(line) for line in
           (directory / 'items.jsonl').read_text().splitlines() if line.strip()]
  item_vectors = np.load(directory / 'item_vectors.npy')
  if item_vectors.shape[0] != len(items):
    raise ConfigError(f'{directory}: item_vectors.npy has {item_vectors.shape[0]} rows for '
                      f'{len(items)} items in items.jsonl; re-run the job or the export.')
  return ModelFiles(directory=directory, info=info,
                    config=read_config(directory / 'config.json'),
                    tokenizer=tokenizer_lib.Tokenizer.from_pretrained_dir(directory / 'tokenizer'),
                    variables=variables, items=items, item_vectors=item_vectors)


def save_from_job(workdir: pathlib.Path, config: ml_collections.ConfigDict, data: Any,
                  params: Any, constants: Any, item_vectors: np.ndarray) -> None:
  """What a job calls after its evaluation: the model directory of `workdir` (process 0
  writes; every process takes part in gathering sharded parameters). data: PreparedData."""
  variables = {'params': params, **(constants or {})}
  if jax.process_count() > 1:
    variables = jax.tree.map(vectors_lib.to_host, variables)
  if jax.process_index() != 0:
    return
  save(pathlib.Path(workdir) / MODEL_DIR, config=config, tokenizer=data.tokenizer,
       variables=variables, items=data.dataset.items, item_vectors=item_vectors,
       context_names=data.dataset.context_names)
