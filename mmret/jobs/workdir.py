"""Workdir safety: one job per workdir, no silent resume under another config, atomic files.

  with lock(workdir):                 # a second job in the same workdir fails at once
    check_resume(workdir, config)     # a resumed run must have the stored config (or safe edits)
    write_text_atomic(workdir / 'config.json', ...)

The lock is an advisory `fcntl.flock` on `<workdir>/.mmret.lock`, held for the whole job and
released by the kernel when the process ends, however it ends (no stale locks after a kill).
The file names its holder (pid, host, command), which the refusal quotes.
"""

from collections.abc import Iterator, Sequence
import contextlib
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

import ml_collections

from mmret.config import ConfigError

LOCK_FILE = '.mmret.lock'
# Keys a resumed run may change without changing what the checkpoint means: how long to train,
# how often to log and save, how to evaluate and report, where the data cache lives.
SAFE_TO_CHANGE = ('train.num_steps', 'train.log_every', 'train.checkpoint_every', 'eval.',
                  'data.cache_dir', 'log_prefix', 'sweep.')


@contextlib.contextmanager
def lock(workdir: pathlib.Path) -> Iterator[None]:
  """Holds `<workdir>/.mmret.lock`; raises ConfigError naming the holder if another has it."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  with open(path, 'a+', encoding='utf-8') as f:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise ConfigError(f'workdir {workdir} is in use by {holder}; wait for it to finish or '
                        'choose another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()} since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")} ({" ".join(sys.argv[:6])})')
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def config_changes(stored: dict, config: ml_collections.ConfigDict,
                   safe: Sequence[str] = SAFE_TO_CHANGE) -> list[str]:
  """Dotted keys whose value differs between a stored config.json and `config`, except the
  safe ones (a prefix ending in '.' covers a whole section)."""
  new = flatten(json.loads(config.to_json_best_effort()))
  old = flatten(stored)
  changed = []
  for key in sorted(set(new) | set(old)):
    if any(key == s or (s.endswith('.') and key.startswith(s)) for s in safe):
      continue
    if new.get(key, '<absent>') != old.get(key, '<absent>'):
      changed.append(f'{key}: {old.get(key, "<absent>")!r} -> {new.get(key, "<absent>")!r}')
  return changed


def check_resume(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                 allow_changes: bool = False) -> None:
  """A workdir holding a run (checkpoints and config.json) resumes only under the same config,
  up to SAFE_TO_CHANGE; anything else stops with the differing keys listed."""
  stored = workdir / 'config.json'
  if allow_changes or not stored.is_file() or not (workdir / 'checkpoints').is_dir():
    return
  try:
    old = json.loads(stored.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f'{stored}: unreadable ({e}); remove it or choose another --workdir.'
                      ) from None
  changed = config_changes(old, config)
  if changed:
    raise ConfigError(
        f'workdir {workdir} holds a run with another config ({len(changed)} key(s) differ: '
        f'{"; ".join(changed[:6])}{"; ..." if len(changed) > 6 else ""}); use another '
        '--workdir, or --allow_config_change to resume it anyway.')


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes a sibling temporary file and renames it over `path`: readers see the old file or
  the new one, never half of one, and a failed write leaves the old file in place."""
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
