"""Each way a user's input can be wrong ends in one line on stderr and exit code 2, before any
training (issue 16). Run through `mmret.launch.run_and_report`, the function the CLI's `main`
calls with the parsed config and workdir (the flag-parsing mistakes are subprocess tests in
test_e2e.py).
"""

import errno
import json
import os
import pathlib
import shutil

import grain.checkpoint
import pytest

from mmret import launch
from mmret.config import ConfigError, load_config
from mmret.jobs.recall import stage1
from mmret.train import checkpoint as checkpoint_lib

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'byod_small'


def _config(source, tmp_path, **overrides):
  return load_config('configs/pretrain.py:tiny', {
      'data.source': str(source), 'data.cache_dir': str(tmp_path / 'cache'),
      'data.vocab_size': 200, 'eval.baselines': (), **overrides})


def _fail(config, workdir, capsys) -> str:
  """Runs the job as the CLI does; asserts exit code 2 and one stderr line; returns it."""
  code = launch.run_and_report(config, str(workdir))
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == 2, err[-3000:]
  assert len(lines) == 1 and lines[0].startswith('mmret: error: '), err[-3000:]
  return lines[0]


def _rows(name):
  return [json.loads(line) for line in (FIXTURE / name).read_text().splitlines()]


def _byod(tmp_path, items=None, interactions=None) -> pathlib.Path:
  """A copy of the small fixture, with items / interactions replaced (lists of dicts or of
  raw lines)."""
  root = tmp_path / 'byod'
  shutil.copytree(FIXTURE, root)
  for name, rows in (('items.jsonl', items), ('interactions.jsonl', interactions)):
    if rows is not None:
      lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
      (root / name).write_bytes(b'\n'.join(lines) + b'\n')
  return root


def test_data_directory_without_items(tmp_path, capsys):
  root = _byod(tmp_path)
  (root / 'items.jsonl').unlink()
  line = _fail(_config(root, tmp_path), tmp_path / 'run', capsys)
  assert line == (f'mmret: error: {root / "items.jsonl"}: not found: a BYOD directory needs '
                  'items.jsonl and interactions.jsonl (docs/DATA.md)')


def test_non_utf8_bytes_name_the_file_and_line(tmp_path, capsys):
  rows = [json.dumps(r).encode() for r in _rows('interactions.jsonl')]
  rows[2] = rows[2].replace(b'white dress', b'white dr\xe9ss')  # Latin-1, not UTF-8
  root = _byod(tmp_path, interactions=rows)
  line = _fail(_config(root, tmp_path), tmp_path / 'run', capsys)
  column = rows[2].index(b'\xe9') + 1
  assert line == (f'mmret: error: {root / "interactions.jsonl"}:3: not UTF-8 (byte 0xe9 at '
                  f'column {column}); save the file as UTF-8')


def test_train_split_without_a_positive_fails_before_training(tmp_path, capsys):
  rows = _rows('interactions.jsonl')
  last = max(r['day'] for r in rows)
  for r in rows:
    if r['day'] != last:  # every train row becomes an impression nobody clicked
      r.update(click=False, purchase=False, engaged=False)
  root = _byod(tmp_path, interactions=rows)
  line = _fail(_config(root, tmp_path), tmp_path / 'run', capsys)
  n_train = sum(r['day'] != last for r in rows)
  assert line.startswith(f'mmret: error: {root / "interactions.jsonl"}: none of the {n_train} '
                         'train interactions is a positive')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_every_title_empty(tmp_path, capsys):
  root = _byod(tmp_path, items=[{**r, 'title': ''} for r in _rows('items.jsonl')])
  line = _fail(_config(root, tmp_path), tmp_path / 'run', capsys)
  assert line.startswith(f"mmret: error: {root / 'items.jsonl'}: field 'title': every title "
                         'is empty')


def test_empty_query_is_rejected_with_its_line(tmp_path, capsys):
  rows = _rows('interactions.jsonl')
  rows[4]['query'] = '  '
  root = _byod(tmp_path, interactions=rows)
  line = _fail(_config(root, tmp_path), tmp_path / 'run', capsys)
  assert line == (f"mmret: error: {root / 'interactions.jsonl'}:5: field 'query': must not be "
                  'empty')


def test_engage_without_an_engaged_train_impression(tmp_path, capsys):
  # Clicks count as positives, but with `engaged: false` none is an engagement label.
  rows = _rows('interactions.jsonl')
  last = max(r['day'] for r in rows)
  for r in rows:
    if r['day'] != last:
      r['engaged'] = False
  root = _byod(tmp_path, interactions=rows)
  config = load_config('configs/engage.py:tiny', {
      'data.source': str(root), 'data.cache_dir': str(tmp_path / 'cache'),
      'data.vocab_size': 200})
  line = _fail(config, tmp_path / 'run', capsys)
  assert line == (f"mmret: error: {root / 'interactions.jsonl'}: field 'engaged': no train "
                  'impression is engaged (engaged true; without that field, clicked or '
                  'bought), so the engagement model has nothing to learn')


def test_unwritable_data_cache(tmp_path, capsys):
  if os.geteuid() == 0:
    cache = pathlib.Path('/sys/mmret_cache')  # see test_read_only_workdir
  else:
    (tmp_path / 'ro').mkdir(mode=0o555)
    cache = tmp_path / 'ro' / 'cache'
  config = _config(FIXTURE, tmp_path, **{'data.cache_dir': str(cache)})
  line = _fail(config, tmp_path / 'run', capsys)
  assert line.startswith(f'mmret: error: cannot write {cache}')
  assert line.endswith('; free space or fix the permissions there, or point --workdir / '
                       'data.cache_dir elsewhere.')


def test_workdir_that_is_a_file(tmp_path, capsys):
  workdir = tmp_path / 'a_file'
  workdir.write_text('x')
  line = _fail(_config(FIXTURE, tmp_path), workdir, capsys)
  assert line == (f'mmret: error: --workdir {workdir} is a file, not a directory; choose '
                  'another --workdir.')


def test_read_only_workdir(tmp_path, capsys):
  if os.geteuid() == 0:
    # Permission bits do not bind root; sysfs refuses new entries to everyone.
    workdir = pathlib.Path('/sys/mmret_read_only_workdir')
  else:
    (tmp_path / 'ro').mkdir(mode=0o555)
    workdir = tmp_path / 'ro' / 'run'
  line = _fail(_config(FIXTURE, tmp_path), workdir, capsys)
  assert line.startswith(f'mmret: error: --workdir {workdir} cannot be written (')
  assert line.endswith('); choose a writable --workdir.')


def test_full_disk_during_a_checkpoint_then_a_clean_resume(tmp_path, capsys, monkeypatch):
  config = _config(FIXTURE, tmp_path, **{'train.num_steps': 3, 'train.checkpoint_every': 1,
                                         'train.log_every': 1})
  workdir = tmp_path / 'run'
  save = grain.checkpoint.CheckpointHandler.save

  def full_disk(self, directory, *args, **kwargs):
    if pathlib.Path(directory).parent.name == f'2{checkpoint_lib.TMP_SUFFIX}':
      raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
    return save(self, directory, *args, **kwargs)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', full_disk)
  line = _fail(config, workdir, capsys)
  checkpoints = workdir.absolute() / 'checkpoints'
  assert line == (f'mmret: error: cannot write the step-2 checkpoint in {checkpoints}: No '
                  'space left on device; free space there (or choose another --workdir) and '
                  'rerun: it resumes from step 1.')
  assert sorted(p.name for p in checkpoints.iterdir()) == ['1']  # no *.orbax-checkpoint-tmp
  assert not (workdir / 'results.json').exists()

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', save)  # space freed
  assert launch.run_and_report(config, str(workdir)) == 0
  out = capsys.readouterr().out
  assert f'resumed from {checkpoints} at step 1' in out and '[step 3/3]' in out
  assert '[step 1/3]' not in out
  assert json.loads((workdir / 'results.json').read_text())['train/steps'] == 3


def test_finished_stage1_run_of_another_config_is_refused(tmp_path):
  finished = load_config('configs/pretrain.py:tiny')
  (tmp_path / 'config.json').write_text(finished.to_json_best_effort())
  stage1.check_finished_run(load_config('configs/pretrain.py:tiny', {
      'train.num_steps': 9, 'eval.batch_size': 7}), tmp_path)  # changes that keep its meaning
  asked = load_config('configs/pretrain.py:tiny', {'optim.lr': 0.5, 'model.width': 64})
  with pytest.raises(ConfigError) as e:
    stage1.check_finished_run(asked, tmp_path)
  assert str(e.value) == (
      f'stage1_workdir {tmp_path} holds a finished stage-1 run of another config (2 key(s) '
      f'differ: stage1.model.width: {finished.model.width} -> 64; stage1.optim.lr: '
      f'{finished.optim.lr} -> 0.5); its vectors would not reflect them: set '
      '--config.stage1_workdir to a new directory to train stage 1 with these keys, or drop '
      'them.')
