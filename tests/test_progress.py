"""What a person sees while data is prepared and a model evaluated (issue 16): a line per
encoding pass and per search, and no TFDS "download" announcement for local files."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

from mmret.data import tfds_builder
from mmret.evaluate import progress
from mmret.evaluate import vectors

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'


def _batches(n_rows: int, batch: int):
  """Fixed-size batches of row ids; the last one padded (`valid` False)."""
  for start in range(0, n_rows, batch):
    ids = np.arange(start, start + batch)
    yield {'x': ids.astype(np.float32), 'valid': ids < n_rows}


def test_extract_reports_rows_encoded_out_of_the_total(capsys, monkeypatch):
  # every_seconds=0: a line after every batch, with the valid rows so far (padding not counted).
  monkeypatch.setattr(progress, 'EVERY_SECONDS', 0.0)
  out = vectors.extract(lambda p, b: jnp.stack([b['x'], 2 * b['x']], axis=1), None,
                        _batches(10, 4), what='items', total=10)
  np.testing.assert_array_equal(out[:, 1], 2 * np.arange(10))
  lines = capsys.readouterr().out.strip().splitlines()
  assert [re.match(r'\[eval\] encoded (\S+) items', line).group(1) for line in lines] == [
      '4/10', '8/10', '10/10', '10']
  assert re.fullmatch(r'\[eval\] encoded 4/10 items \(\d[\d,]*/s, ETA \d+s\)', lines[0])
  assert re.fullmatch(r'\[eval\] encoded 10 items in \d+\.\ds \(\d[\d,]*/s\)', lines[-1])


def test_extract_prints_one_line_when_it_is_quick(capsys):
  vectors.extract(lambda p, b: jnp.asarray(b['x'])[:, None], None, _batches(5, 4), what='queries', total=5)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('[eval] encoded 5 queries in ')


def test_search_line_names_sizes_and_times(capsys):
  progress.searched(19, 200, 100, {'exact': 0.25, 'scann_build': 0.5, 'scann_search': 0.125,
                                   'metrics': 1.5})
  progress.searched(3, 7, 7, {'exact': 0.004, 'metrics': 0.0})
  assert capsys.readouterr().out.splitlines() == [
      '[eval] searched the top 100 of 200 items for 19 queries: exact 0.25s, ScaNN build 0.50s '
      '+ search 0.12s, metrics 1.50s',
      '[eval] searched the top 7 of 7 items for 3 queries: exact 0.00s, metrics 0.00s']


def test_local_data_is_converted_without_a_download_message(tmp_path, capfd):
  tfds_builder.prepare(FIXTURE, tmp_path / 'tfds', image_size=8)
  captured = capfd.readouterr()
  text = captured.out + captured.err
  assert 'Downloading' not in text and 'downloaded and prepared' not in text, text
  assert 'Using custom data configuration' not in text, text
  assert f'[data] converting {FIXTURE.resolve()} (6 items, 16 interactions) to TFDS in ' in text
  tfds_builder.prepare(FIXTURE, tmp_path / 'tfds', image_size=8)  # cached: nothing to say
  assert '[data]' not in capfd.readouterr().out
