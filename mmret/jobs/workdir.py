"""Workdir safety: one job per workdir, no silent resume under another config, atomic files.

  with lock(workdir):                 # a second job in the same workdir fails at once
    check_resume(workdir, config)     # a resumed run must have the stored config (or safe edits)
    files.write_text_atomic(workdir / 'config.json', ...)  # mmret/files.py

The lock is an advisory `fcntl.flock` on `<workdir>/.mmret.lock`, held for the whole job and
released by the kernel when the process ends, however it ends (no stale locks after a kill).
The file names its holder (pid, host, command), which the refusal quotes.
"""

from collections.abc import Iterator
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

import ml_collections

from mmret.config import ConfigError
from mmret.config.changes import config_changes

LOCK_FILE = '.mmret.lock'


def ensure_writable(workdir: pathlib.Path) -> None:
  """Creates `workdir` and checks that files can be written there (a probe file, since
  permission bits do not tell for root, read-only mounts or ACLs); raises ConfigError."""
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f'--workdir {workdir} is a file, not a directory; choose another '
                      '--workdir.')
  probe = workdir / f'.mmret-write-probe.{os.getpid()}'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    what = 'a parent is a file' if e.errno in (errno.ENOTDIR, errno.EEXIST) else e.strerror
    raise ConfigError(f'--workdir {workdir} cannot be written ({what}); choose a writable '
                      '--workdir.') from None


@contextlib.contextmanager
def lock(workdir: pathlib.Path) -> Iterator[None]:
  """Holds `<workdir>/.mmret.lock`; raises ConfigError naming the holder if another has it."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  with open(path, 'a+', encoding='utf-8') as f:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _in_use(workdir, f) from None
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


def _in_use(workdir: pathlib.Path, f) -> ConfigError:
  f.seek(0)
  holder = f.read().strip() or 'another process'
  return ConfigError(f'workdir {workdir} is in use by {holder}; wait for it to finish or '
                     'choose another --workdir.')


def refuse_if_busy(workdir: pathlib.Path) -> None:
  """Raises `lock`'s ConfigError if another job holds `workdir`, without keeping the lock: the
  CLI's check before it loads JAX (seconds), so that a second job is refused at once. `lock`
  is what protects the workdir; this only answers early."""
  path = workdir / LOCK_FILE
  if not path.is_file():
    return
  try:
    with open(path, encoding='utf-8') as f:
      try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise _in_use(workdir, f) from None
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
  except OSError:
    return  # unreadable here: `lock` will say why


def check_resume(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                 allow_changes: bool = False) -> None:
  """A workdir holding a run (checkpoints and config.json) resumes only under the same config,
  up to SAFE_TO_CHANGE; anything else stops with the differing keys listed. The checkpoints
  may be one level down (the recall job's `<fusion>/checkpoints`, its `stage1/checkpoints`)."""
  stored = workdir / 'config.json'
  has_run = (workdir / 'checkpoints').is_dir() or any(workdir.glob('*/checkpoints'))
  if allow_changes or not stored.is_file() or not has_run:
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
