"""notebooks/quickstart.ipynb runs end to end (tiny shapes, CPU), so it cannot rot."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]))
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.delenv('MPLBACKEND', raising=False)  # the kernel's inline backend draws PNGs
  nb = nbformat.read(ROOT / 'notebooks' / 'quickstart.ipynb', as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(ROOT / 'notebooks')}})
  client.execute()
  outputs = {i: ''.join(o.get('text', '') for o in cell.get('outputs', []))
             for i, cell in enumerate(nb.cells) if cell.cell_type == 'code'}
  text = '\n'.join(outputs.values())
  # The Recall@K table, the hits and the portable tower's check are all printed.
  assert 'model (ScaNN)' in text and 'BM25' in text
  assert 'portable tower == model: True' in text
  assert any(o.get('output_type') == 'display_data' and 'image/png' in o.get('data', {})
             for cell in nb.cells for o in cell.get('outputs', []))
